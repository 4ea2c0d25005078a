package agent

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestNodeAddressesAreInternalIPsIPv4First(t *testing.T) {
	n := &corev1.Node{Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: "fd00::5"},
		{Type: corev1.NodeExternalIP, Address: "203.0.113.9"},
		{Type: corev1.NodeHostName, Address: "n1"},
		{Type: corev1.NodeInternalIP, Address: "10.0.0.5"},
		{Type: corev1.NodeInternalIP, Address: "not-an-ip"},
	}}}
	want := []netip.Addr{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("fd00::5")}
	if got := nodeAddresses(n); !slices.Equal(got, want) {
		t.Errorf("nodeAddresses = %v, want %v", got, want)
	}
}

func TestConfigNeedsNodeName(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.validate(); err == nil || !strings.Contains(err.Error(), "--node-name") {
		t.Errorf("validate without a node name = %v, want an error naming --node-name", err)
	}
	cfg.NodeName = "n1"
	if err := cfg.validate(); err != nil {
		t.Errorf("default config with a node name: %v", err)
	}
	cfg.ReconcileInterval = 0
	if err := cfg.validate(); err == nil {
		t.Error("a zero reconcile interval was accepted")
	}
}
