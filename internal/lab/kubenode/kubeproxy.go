package kubenode

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
)

// ClusterCIDR is the pods' range as kube-proxy is told it (twill's pool in the lab): traffic to a
// Service from outside it is masqueraded.
const ClusterCIDR = "10.244.0.0/16"

// kubeProxyConfig is the node's KubeProxyConfiguration: nftables mode, its table in the node's
// network namespace (and gone with it). The conntrack settings it would otherwise tune are
// global to the machine (nf_conntrack_max) or not ours to change: zero tells it to leave each
// alone.
func (n *Node) kubeProxyConfig(kubeconfig string) map[string]any {
	return map[string]any{
		"apiVersion":       "kubeproxy.config.k8s.io/v1alpha1",
		"kind":             "KubeProxyConfiguration",
		"mode":             "nftables",
		"hostnameOverride": n.Name,
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

// startKubeProxy writes kube-proxy's credentials (system:kube-proxy, which the apiserver's
// default policy binds to system:node-proxier) and configuration, and starts it.
func (n *Node) startKubeProxy() error {
	kubeconfig := filepath.Join(n.Dir, "pki", "kube-proxy.kubeconfig")
	if err := n.cfg.ControlPlane.WriteKubeconfigFor(kubeconfig, "system:kube-proxy"); err != nil {
		return err
	}
	conf, err := json.MarshalIndent(n.kubeProxyConfig(kubeconfig), "", "  ")
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
