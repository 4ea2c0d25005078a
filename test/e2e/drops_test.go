package e2e

import (
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"

	"github.com/twill-net/twill/internal/flow"
	"github.com/twill-net/twill/internal/lab/cluster"
)

// dropEventWait bounds how long a dropped connection takes to show in `twill policy drops`
// (the kernel batches drop log messages for up to 100 ms).
const dropEventWait = 10 * time.Second

// A connection a policy drops shows in `twill policy drops` on the node that dropped it,
// naming the pod, the peer, the port and what decided: default deny of a NetworkPolicy on
// the server's node (ingress), an Admin tier Deny rule on the client's node (egress).
func TestPolicyDropsAreReportedWithPodAndPolicy(t *testing.T) {
	c := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	installCNPCRD(t, ctx, c)
	ns := policyNamespace(t, ctx, c)
	server := addLabelledPod(t, ctx, c, "n1", ns, "server", map[string]string{"app": "server"})
	client := addLabelledPod(t, ctx, c, "n2", ns, "client", nil)
	blocked := addLabelledPod(t, ctx, c, "n2", ns, "blocked", map[string]string{"role": "blocked"})
	serveEcho(t, server.Sandbox, netip.Addr{})

	createPolicy(t, ctx, c, denyAll(ns, networkingv1.PolicyTypeIngress))
	waitReach(t, ctx, client, server, false, "default deny: client -> server")
	waitDropEvent(t, ctx, c.Node("n1"), "client -> server under default deny", func(e flow.DropEvent) bool {
		return e.Pod == ns+"/server" && e.Direction == "ingress" && e.Reason == flow.ReasonDefaultDeny &&
			e.Rule == "default-deny" && e.Peer == client.IPv4() && e.PodAddress == server.IPv4() &&
			e.Protocol == "tcp" && e.DstPort == echoPort
	})

	cnpName := ns + "-no-egress-to-server"
	inNS := metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}}
	createCNP(t, ctx, c, &v1alpha2.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: cnpName},
		Spec: v1alpha2.ClusterNetworkPolicySpec{
			Tier: v1alpha2.AdminTier, Priority: 10,
			Subject: v1alpha2.ClusterNetworkPolicySubject{Pods: &v1alpha2.NamespacedPod{
				NamespaceSelector: inNS,
				PodSelector:       metav1.LabelSelector{MatchLabels: map[string]string{"role": "blocked"}},
			}},
			Egress: []v1alpha2.ClusterNetworkPolicyEgressRule{{
				Name: "to-server", Action: v1alpha2.ClusterNetworkPolicyRuleActionDeny,
				To: []v1alpha2.ClusterNetworkPolicyEgressPeer{{Pods: &v1alpha2.NamespacedPod{
					NamespaceSelector: inNS,
					PodSelector:       metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}},
				}}},
			}},
		},
	})
	// The blocked pod's connections are dropped on its own node (egress) once the Admin rule
	// is in force; until then the server's default deny drops them on n1.
	deadline := time.Now().Add(cnpWait + dropEventWait)
	for {
		_ = dialOnce(ctx, blocked.Sandbox, server.IPv4(), 300*time.Millisecond)
		found, all := findDropEvent(t, ctx, c.Node("n2"), func(e flow.DropEvent) bool {
			return e.Pod == ns+"/blocked" && e.Direction == "egress" && e.Reason == flow.ReasonPolicy &&
				e.Tier == "admin" && e.Policy == cnpName && e.Rule == "0" &&
				e.Peer == server.IPv4() && e.DstPort == echoPort
		})
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("twill policy drops on n2: no egress drop of %s/blocked by %s rule 0; got:\n%s", ns, cnpName, all)
		}
		time.Sleep(300 * time.Millisecond)
	}
	out, err := c.Node("n2").Command(ctx, twillBin, "policy", "drops").CombinedOutput()
	if err != nil {
		t.Fatalf("twill policy drops: %v\n%s", err, out)
	}
	t.Logf("twill policy drops on n2:\n%s", out)
	if !strings.Contains(string(out), ns+"/blocked") || !strings.Contains(string(out), cnpName) {
		t.Errorf("twill policy drops table on n2: want a row naming %s/blocked and %s, got:\n%s", ns, cnpName, out)
	}
}

// waitDropEvent waits until the agent of node n reports a drop event that match accepts.
func waitDropEvent(t *testing.T, ctx context.Context, n *cluster.Node, what string, match func(flow.DropEvent) bool) {
	t.Helper()
	deadline := time.Now().Add(dropEventWait)
	for {
		found, all := findDropEvent(t, ctx, n, match)
		if found {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("twill policy drops on %s: no drop event for %s; got:\n%s", n.Name, what, all)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// findDropEvent reads `twill policy drops --json` on node n (the agent's own endpoint, as a
// user on the node would) and says whether an event matches; all is what it read.
func findDropEvent(t *testing.T, ctx context.Context, n *cluster.Node, match func(flow.DropEvent) bool) (found bool, all string) {
	t.Helper()
	out, err := n.Command(ctx, twillBin, "policy", "drops", "--json").Output()
	if err != nil {
		t.Fatalf("twill policy drops --json on %s: %v\n%s", n.Name, err, out)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var e flow.DropEvent
		if err := dec.Decode(&e); err != nil {
			t.Fatalf("twill policy drops --json on %s: %v\n%s", n.Name, err, out)
		}
		if match(e) {
			return true, string(out)
		}
	}
	return false, string(out)
}
