package kubenode

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// ClusterCIDR is the pods' range as kube-proxy is told it (twill's pool in the lab): traffic to a
// Service from outside it is masqueraded.
const ClusterCIDR = "10.244.0.0/16"

// kube-proxy's modes the lab runs (KubeProxyConfiguration's mode).
const (
	KubeProxyNFTables = "nftables"
	KubeProxyIPTables = "iptables"
)

// KubeProxyConfig is a node's KubeProxyConfiguration: the given mode (default nftables), its
// rules in the node's network namespace (and gone with it). The conntrack settings it would
// otherwise tune are global to the machine (nf_conntrack_max) or not ours to change: zero
// tells it to leave each alone. Exported so that the services benchmark runs kube-proxy exactly
// as the lab does.
func KubeProxyConfig(nodeName, kubeconfig, mode string) map[string]any {
	if mode == "" {
		mode = KubeProxyNFTables
	}
	return map[string]any{
		"apiVersion":       "kubeproxy.config.k8s.io/v1alpha1",
		"kind":             "KubeProxyConfiguration",
		"mode":             mode,
		"hostnameOverride": nodeName,
		"clusterCIDR":      ClusterCIDR,
		"clientConnection": map[string]any{"kubeconfig": kubeconfig},
		"conntrack": map[string]any{
			"maxPerCore":            0,
			"min":                   0,
			"tcpEstablishedTimeout": "0s",
			"tcpCloseWaitTimeout":   "0s",
			"udpTimeout":            "0s",
			"udpStreamTimeout":      "0s",
		},
		// Each node's are in its own network namespace; loopback keeps them off the underlay.
		"healthzBindAddress": "127.0.0.1:10256",
		"metricsBindAddress": "127.0.0.1:10249",
	}
}

// ValidKubeProxyMode says whether mode is one the lab runs ("" is nftables).
func ValidKubeProxyMode(mode string) error {
	switch mode {
	case "", KubeProxyNFTables, KubeProxyIPTables:
		return nil
	}
	return fmt.Errorf("kube-proxy mode %q: want %s or %s", mode, KubeProxyNFTables, KubeProxyIPTables)
}

// startKubeProxy writes kube-proxy's credentials (system:kube-proxy, which the apiserver's
// default policy binds to system:node-proxier) and configuration, and starts it.
func (n *Node) startKubeProxy() error {
	if err := ValidKubeProxyMode(n.cfg.KubeProxyMode); err != nil {
		return err
	}
	kubeconfig := filepath.Join(n.Dir, "pki", "kube-proxy.kubeconfig")
	if err := n.cfg.ControlPlane.WriteKubeconfigFor(kubeconfig, "system:kube-proxy"); err != nil {
		return err
	}
	conf, err := json.MarshalIndent(KubeProxyConfig(n.Name, kubeconfig, n.cfg.KubeProxyMode), "", "  ")
	if err != nil {
		return err
	}
	confFile := filepath.Join(n.Dir, "kube-proxy.json")
	if err := os.WriteFile(confFile, conf, 0o644); err != nil {
		return err
	}
	n.kubeProxy, err = n.startDaemon("kube-proxy", filepath.Join(n.Dir, "logs", "kube-proxy.log"),
		n.Command(context.Background(), filepath.Join(n.cfg.BinDir, "kube-proxy"),
			"--config="+confFile,
			"--v=2",
		))
	return err
}
