package labctl

import (
	"slices"
	"testing"

	"github.com/twill-net/twill/internal/lab/kubenode"
)

// `lab up --services kube-proxy-iptables` runs kube-proxy in iptables mode, and the agents
// leave Services to it.
func TestServicesChooseKubeProxyMode(t *testing.T) {
	for services, want := range map[string]string{
		ServicesKubeProxy:         kubenode.KubeProxyNFTables,
		ServicesKubeProxyIPTables: kubenode.KubeProxyIPTables,
	} {
		o := Options{Nodes: 1, Routing: RoutingVXLAN, Services: services}
		if err := o.validate(); err != nil {
			t.Fatalf("%s: %v", services, err)
		}
		if got := o.kubeProxyMode(); got != want {
			t.Errorf("%s: kube-proxy mode %s, want %s", services, got, want)
		}
		if slices.Contains(o.agentArgs(), "--services") {
			t.Errorf("%s: the agents serve Services too: %v", services, o.agentArgs())
		}
	}
	if err := (&Options{Nodes: 1, Routing: RoutingVXLAN, Services: "kube-proxy-ipvs"}).validate(); err == nil {
		t.Error("an unknown services mode is accepted")
	}
}
