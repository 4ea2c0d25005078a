package kubenode

import "testing"

func TestKubeProxyConfigMode(t *testing.T) {
	for mode, want := range map[string]string{"": KubeProxyNFTables, KubeProxyNFTables: KubeProxyNFTables, KubeProxyIPTables: KubeProxyIPTables} {
		c := KubeProxyConfig("node1", "/k.kubeconfig", mode)
		if c["mode"] != want || c["hostnameOverride"] != "node1" || c["clusterCIDR"] != ClusterCIDR {
			t.Errorf("mode %q: config %v, want mode %s", mode, c, want)
		}
		if err := ValidKubeProxyMode(mode); err != nil {
			t.Errorf("mode %q refused: %v", mode, err)
		}
	}
	if err := ValidKubeProxyMode("ipvs"); err == nil {
		t.Error("ipvs accepted: the lab runs iptables or nftables only")
	}
}
