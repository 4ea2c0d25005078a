// Package kube builds the Kubernetes API clients twill's agent and CLI share: from a kubeconfig
// file when one is given (the lab, a developer's machine) and from the in-cluster service
// account otherwise (the DaemonSet on a real cluster).
package kube

import (
	"fmt"
	"os"

	apiext "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Clients are the typed, dynamic (for twill's own CRDs) and apiextensions clients over one
// rest.Config.
type Clients struct {
	Config  *rest.Config
	Kube    kubernetes.Interface
	Dynamic dynamic.Interface
	APIExt  apiext.Interface
}

// RESTConfig loads the client configuration: the kubeconfig at path, else $KUBECONFIG, else the
// in-cluster service account.
func RESTConfig(path string) (*rest.Config, error) {
	if path == "" {
		path = os.Getenv("KUBECONFIG")
	}
	if path == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no kubeconfig given (--kubeconfig or $KUBECONFIG) and not running in a cluster: %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("loading kubeconfig %s: %w", path, err)
	}
	return cfg, nil
}

// NewClients builds all clients over cfg. The agent's QPS is raised from client-go's default of
// 5 because a burst of pod ADDs on a fresh node claims blocks and updates their usage.
func NewClients(cfg *rest.Config, userAgent string) (*Clients, error) {
	listNotWatchList()
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = userAgent
	// Uncompressed: twill's clients reach an API server in their own cluster (the agent, the
	// lab's tools), where gzip only costs CPU on both ends. It was a fifth of the agent's CPU
	// in a full resync of 10,000 services, its watch streams decompressed as they came, and
	// more on the server, which compresses them, on the same cores in the lab.
	cfg.DisableCompression = true
	if cfg.QPS == 0 {
		cfg.QPS, cfg.Burst = 50, 100
	}
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	dc, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("dynamic client: %w", err)
	}
	ac, err := apiext.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("apiextensions client: %w", err)
	}
	return &Clients{Config: cfg, Kube: kc, Dynamic: dc, APIExt: ac}, nil
}
