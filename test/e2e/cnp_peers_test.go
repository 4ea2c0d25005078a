package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"

	"github.com/twill-net/twill/internal/lab/cluster"
)

// nodePort is where the node peers' test listens in a node's own namespace.
const nodePort = 18091

// ClusterNetworkPolicy's node and network peers: an Admin Deny to the nodes a label selects
// keeps the client from one node's address but not another's, and a Deny to a network (one
// pod's address as a CIDR) keeps it from that pod but not from its neighbour.
func TestClusterNetworkPolicyNodeAndNetworkPeers(t *testing.T) {
	c := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	installCNPCRD(t, ctx, c)
	ns := policyNamespace(t, ctx, c)
	client := addLabelledPod(t, ctx, c, "n1", ns, "client", map[string]string{"app": "client"})
	target := addLabelledPod(t, ctx, c, "n3", ns, "target", nil)
	neighbour := addLabelledPod(t, ctx, c, "n3", ns, "neighbour", nil)
	serveEcho(t, target.Sandbox, netip.Addr{})
	serveEcho(t, neighbour.Sandbox, netip.Addr{})
	n2, n3 := c.Node("n2"), c.Node("n3")
	for _, n := range []*cluster.Node{n2, n3} {
		listenEcho(t, n.Node, "tcp4", netip.AddrPortFrom(n.IP, nodePort).String())
	}
	nodeLabel := "e2e.twill.dev/deny-" + ns
	labelNode(t, ctx, c, "n2", nodeLabel, "true")
	for _, n := range []*cluster.Node{n2, n3} {
		waitReachAddr(t, ctx, client, netip.AddrPortFrom(n.IP, nodePort), true, "no policy: client -> node "+n.Name)
	}

	subject := &v1alpha2.NamespacedPod{
		NamespaceSelector: metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}},
		PodSelector:       metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}},
	}
	createCNP(t, ctx, c, &v1alpha2.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: ns + "-deny-peers"},
		Spec: v1alpha2.ClusterNetworkPolicySpec{
			Tier: v1alpha2.AdminTier, Priority: 20,
			Subject: v1alpha2.ClusterNetworkPolicySubject{Pods: subject},
			Egress: []v1alpha2.ClusterNetworkPolicyEgressRule{
				{Name: "deny-labelled-nodes", Action: v1alpha2.ClusterNetworkPolicyRuleActionDeny,
					To: []v1alpha2.ClusterNetworkPolicyEgressPeer{{Nodes: &metav1.LabelSelector{MatchLabels: map[string]string{nodeLabel: "true"}}}}},
				{Name: "deny-target-network", Action: v1alpha2.ClusterNetworkPolicyRuleActionDeny,
					To: []v1alpha2.ClusterNetworkPolicyEgressPeer{{Networks: []v1alpha2.CIDR{v1alpha2.CIDR(target.IPv4().String() + "/32")}}}},
			},
		},
	})
	waitReachAddr(t, ctx, client, netip.AddrPortFrom(n2.IP, nodePort), false, "Admin Deny to labelled nodes: client -> n2")
	waitReachAddr(t, ctx, client, netip.AddrPortFrom(target.IPv4(), echoPort), false, "Admin Deny to the target's network: client -> target")
	waitReachAddr(t, ctx, client, netip.AddrPortFrom(n3.IP, nodePort), true, "node without the label: client -> n3")
	waitReachAddr(t, ctx, client, netip.AddrPortFrom(neighbour.IPv4(), echoPort), true, "pod outside the network: client -> neighbour")
}

// The Baseline tier comes after NetworkPolicy: its Deny keeps a client out of a pod no
// NetworkPolicy selects, and a NetworkPolicy that lets the client in overrides it.
func TestClusterNetworkPolicyBaselineYieldsToNetworkPolicy(t *testing.T) {
	c := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	installCNPCRD(t, ctx, c)
	ns := policyNamespace(t, ctx, c)
	server := addLabelledPod(t, ctx, c, "n1", ns, "server", map[string]string{"app": "server"})
	client := addLabelledPod(t, ctx, c, "n2", ns, "client", map[string]string{"role": "client"})
	serveEcho(t, server.Sandbox, netip.Addr{})
	waitReach(t, ctx, client, server, true, "no policy: client -> server")

	inNS := metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}}
	createCNP(t, ctx, c, &v1alpha2.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: ns + "-baseline-deny"},
		Spec: v1alpha2.ClusterNetworkPolicySpec{
			Tier: v1alpha2.BaselineTier, Priority: 10,
			Subject: v1alpha2.ClusterNetworkPolicySubject{Namespaces: &inNS},
			Ingress: []v1alpha2.ClusterNetworkPolicyIngressRule{{
				Name: "deny-namespace", Action: v1alpha2.ClusterNetworkPolicyRuleActionDeny,
				From: []v1alpha2.ClusterNetworkPolicyIngressPeer{{Namespaces: &inNS}},
			}},
		},
	})
	waitReach(t, ctx, client, server, false, "Baseline Deny, no NetworkPolicy: client -> server")
	createPolicy(t, ctx, c, allowIngressFrom(ns, "allow-clients", map[string]string{"app": "server"}, map[string]string{"role": "client"}))
	waitReach(t, ctx, client, server, true, "NetworkPolicy allows before Baseline: client -> server")
}

// waitReachAddr waits until from connects to addr (want true) or a connection is dropped.
func waitReachAddr(t *testing.T, ctx context.Context, from *cluster.Pod, addr netip.AddrPort, want bool, what string) {
	t.Helper()
	deadline := time.Now().Add(cnpWait)
	var err error
	for time.Now().Before(deadline) {
		err = dialPort(ctx, from.Sandbox, addr, 300*time.Millisecond)
		if want && err == nil || !want && isDropped(err) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("%s (%s -> %s): want reachable %v, last attempt: %v", what, from.IPv4(), addr, want, errOrConnected(err))
}

// labelNode sets a label on a node until the test ends.
func labelNode(t *testing.T, ctx context.Context, c *cluster.Cluster, node, key, value string) {
	t.Helper()
	nodes := c.Clients.Kube.CoreV1().Nodes()
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, key, value)
	if _, err := nodes.Patch(ctx, node, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		patch := fmt.Sprintf(`{"metadata":{"labels":{%q:null}}}`, key)
		if _, err := nodes.Patch(context.Background(), node, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Errorf("removing label %s from node %s: %v", key, node, err)
		}
	})
}
