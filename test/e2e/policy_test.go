package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/twill-net/twill/internal/lab/cluster"
	"github.com/twill-net/twill/internal/lab/underlay"
)

// policyWait bounds how long a policy or label change may take to be enforced on every node
// (the target is 100 ms at p99; the API watch adds its own delay).
const policyWait = 5 * time.Second

// A default-deny-ingress namespace: B cannot reach A; an allow rule for B's label lets it in;
// taking the label away shuts it out again. No restart anywhere.
func TestPolicyDefaultDenyAllowAndLabelChanges(t *testing.T) {
	c := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ns := policyNamespace(t, ctx, c)
	a := addLabelledPod(t, ctx, c, "n1", ns, "a", map[string]string{"app": "server"})
	b := addLabelledPod(t, ctx, c, "n2", ns, "b", nil)
	serveEcho(t, a.Sandbox, netip.Addr{})
	waitReach(t, ctx, b, a, true, "no policy yet: B -> A")

	createPolicy(t, ctx, c, denyAll(ns, networkingv1.PolicyTypeIngress))
	waitReach(t, ctx, b, a, false, "default deny: B -> A")

	createPolicy(t, ctx, c, allowIngressFrom(ns, "allow-clients", map[string]string{"app": "server"}, map[string]string{"role": "client"}))
	expectBlocked(t, ctx, b, a, "allow rule for role=client, B without the label: B -> A")

	explain := func() string {
		out, err := c.Node("n1").Command(ctx, twillBin, "policy", "explain", ns+"/b", ns+"/a", fmt.Sprintf("%d/tcp", echoPort),
			"--kubeconfig", c.Kubeconfig).CombinedOutput()
		if err != nil {
			t.Fatalf("twill policy explain: %v\n%s", err, out)
		}
		t.Logf("twill policy explain %s/b %s/a %d/tcp:\n%s", ns, ns, echoPort, out)
		return string(out)
	}
	if out := explain(); !strings.HasPrefix(out, "DENIED") || !strings.Contains(out, "default deny") {
		t.Errorf("twill policy explain before the label: want DENIED by default deny, got:\n%s", out)
	}

	// A's node counted the drops as default deny of ingress.
	counters := func() string {
		out, err := c.Node("n1").Command(ctx, twillBin, "policy", "counters").CombinedOutput()
		if err != nil {
			t.Fatalf("twill policy counters: %v\n%s", err, out)
		}
		t.Logf("twill policy counters on n1:\n%s", out)
		return string(out)
	}
	if out := counters(); !hasCounterLine(out, "drop", "networkpolicy", "ingress", "default-deny") {
		t.Errorf("twill policy counters on n1: want a non-zero default-deny ingress drop, got:\n%s", out)
	}

	setLabel(t, ctx, c, ns, "b", "role", "client")
	waitReach(t, ctx, b, a, true, "B labelled role=client: B -> A")
	if out := explain(); !strings.HasPrefix(out, "ALLOWED") || !strings.Contains(out, ns+"/allow-clients") {
		t.Errorf("twill policy explain after the label: want ALLOWED by %s/allow-clients, got:\n%s", ns, out)
	}
	if out := counters(); !hasCounterLine(out, "allow", "networkpolicy", ns+"/allow-clients", "ingress", "0") {
		t.Errorf("twill policy counters on n1: want a non-zero count of %s/allow-clients rule 0, got:\n%s", ns, out)
	}

	audit, err := c.Node("n1").Command(ctx, twillBin, "policy", "audit", "--kubeconfig", c.Kubeconfig).CombinedOutput()
	if err != nil {
		t.Fatalf("twill policy audit: %v\n%s", err, audit)
	}
	if !strings.Contains(string(audit), "  "+ns+" egress\n") || strings.Contains(string(audit), "  "+ns+" ingress\n") {
		t.Errorf("twill policy audit: want %s listed without default deny for egress only, got:\n%s", ns, audit)
	}

	setLabel(t, ctx, c, ns, "b", "role", "")
	waitReach(t, ctx, b, a, false, "label removed again: B -> A")
}

// From the first packet: a pod created under default deny is unreachable the moment its ADD
// answers (every one of a burst of connections started then is dropped, none refused or
// accepted by the pod), while a pod that policy lets in is reachable on the first try.
func TestPolicyInForceFromFirstPacket(t *testing.T) {
	c := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ns := policyNamespace(t, ctx, c)
	near := addLabelledPod(t, ctx, c, "n1", ns, "prober-near", map[string]string{"role": "client"})
	far := addLabelledPod(t, ctx, c, "n2", ns, "prober-far", map[string]string{"role": "client"})
	createPolicy(t, ctx, c, denyAll(ns, networkingv1.PolicyTypeIngress))
	createPolicy(t, ctx, c, allowIngressFrom(ns, "allow-open", map[string]string{"app": "open"}, map[string]string{"role": "client"}))

	// The policies must be in force on n1, and both probers' addresses known there, before the
	// checks below mean anything.
	guard := addLabelledPod(t, ctx, c, "n1", ns, "guard", nil)
	serveEcho(t, guard.Sandbox, netip.Addr{})
	waitReach(t, ctx, near, guard, false, "default deny: prober-near -> guard")
	waitReach(t, ctx, far, guard, false, "default deny: prober-far -> guard")
	known := addLabelledPod(t, ctx, c, "n1", ns, "known", map[string]string{"app": "open"})
	serveEcho(t, known.Sandbox, netip.Addr{})
	waitReach(t, ctx, near, known, true, "allowed: prober-near -> known")
	waitReach(t, ctx, far, known, true, "allowed: prober-far -> known")

	const tries = 8
	var mu sync.Mutex
	var results []error
	var wg sync.WaitGroup
	addPod(t, ctx, c, "n1", cluster.PodOptions{Name: "closed", Namespace: ns, AfterAdd: func(p *cluster.Pod) {
		for i := range tries {
			from := near
			if i%2 == 1 {
				from = far
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := dialOnce(ctx, from.Sandbox, p.IPv4(), 400*time.Millisecond)
				mu.Lock()
				results = append(results, err)
				mu.Unlock()
			}()
			time.Sleep(2 * time.Millisecond)
		}
	}})
	wg.Wait()
	for i, err := range results {
		if !isDropped(err) {
			t.Errorf("connection %d to the pod under default deny, started as its ADD answered: %v (want dropped: a timeout)", i, errOrConnected(err))
		}
	}

	var firstTry error
	addPod(t, ctx, c, "n1", cluster.PodOptions{Name: "open", Namespace: ns, Labels: map[string]string{"app": "open"},
		AfterAdd: func(p *cluster.Pod) {
			serveEcho(t, p.Sandbox, netip.Addr{})
			firstTry = echo(ctx, near.Sandbox, p.IPv4())
		}})
	if firstTry != nil {
		t.Errorf("allowed pod, first connection as its ADD answered: %v", firstTry)
	}
}

// Replies of allowed connections pass although both ends are isolated in both directions: the
// client's egress rule and the server's ingress rule allow the connection, and no rule allows
// the replies themselves. The server still cannot open a connection to the client.
func TestPolicyRepliesOfAllowedConnectionsPass(t *testing.T) {
	c := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ns := policyNamespace(t, ctx, c)
	server := addLabelledPod(t, ctx, c, "n1", ns, "server", map[string]string{"app": "server"})
	client := addLabelledPod(t, ctx, c, "n3", ns, "client", map[string]string{"role": "client"})
	serveEcho(t, server.Sandbox, netip.Addr{})
	listenEcho(t, server.Sandbox, "tcp4", fmt.Sprintf("0.0.0.0:%d", otherPort))
	serveEcho(t, client.Sandbox, netip.Addr{})

	createPolicy(t, ctx, c, denyAll(ns, networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress))
	createPolicy(t, ctx, c, allowIngressFrom(ns, "server-from-clients", map[string]string{"app": "server"}, map[string]string{"role": "client"}))
	port := intstr.FromInt32(echoPort)
	tcp := corev1.ProtocolTCP
	createPolicy(t, ctx, c, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "clients-to-server", Namespace: ns},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "client"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress: []networkingv1.NetworkPolicyEgressRule{{
				To:    []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
			}},
		},
	})
	// Wait for each half of the policy to be in force: the server's egress or the client's
	// ingress, and the client's egress port or the server's ingress.
	waitReach(t, ctx, server, client, false, "no rule: server -> client")
	waitDropped(t, ctx, client, server, otherPort, "egress to another port: client -> server")
	if err := echo(ctx, client.Sandbox, server.IPv4()); err != nil {
		t.Errorf("allowed connection client -> server (echo needs the replies): %v", err)
	}
}

// otherPort is a port no policy of these tests allows.
const otherPort = echoPort + 1

func waitDropped(t *testing.T, ctx context.Context, from, to *cluster.Pod, port uint16, what string) {
	t.Helper()
	deadline := time.Now().Add(policyWait)
	var err error
	for time.Now().Before(deadline) {
		if err = dialPort(ctx, from.Sandbox, netip.AddrPortFrom(to.IPv4(), port), 300*time.Millisecond); isDropped(err) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("%s (%s -> %s:%d): want dropped, last attempt: %v", what, from.IPv4(), to.IPv4(), port, errOrConnected(err))
}

// policyNamespace makes a namespace of the test's own, whose pods and policies are removed at
// the end (the lab runs no namespace controller, so the namespace itself stays Terminating).
func policyNamespace(t *testing.T, ctx context.Context, c *cluster.Cluster) string {
	t.Helper()
	name := fmt.Sprintf("pol-%04x", rand.IntN(1<<16))
	_, err := c.Clients.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The lab runs no controller that would make the service account pods need.
	_, err = c.Clients.Kube.CoreV1().ServiceAccounts(name).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		if err := c.Clients.Kube.NetworkingV1().NetworkPolicies(name).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			t.Errorf("deleting the policies of %s: %v", name, err)
		}
		_ = c.Clients.Kube.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
	})
	return name
}

func addLabelledPod(t *testing.T, ctx context.Context, c *cluster.Cluster, node, ns, name string, labels map[string]string) *cluster.Pod {
	t.Helper()
	return addPod(t, ctx, c, node, cluster.PodOptions{Name: name, Namespace: ns, Labels: labels})
}

func addPod(t *testing.T, ctx context.Context, c *cluster.Cluster, node string, o cluster.PodOptions) *cluster.Pod {
	t.Helper()
	p, err := c.AddPodWith(ctx, c.Node(node), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Remove(context.Background(), p); err != nil {
			t.Errorf("removing pod %s: %v", p.Name, err)
		}
	})
	return p
}

func createPolicy(t *testing.T, ctx context.Context, c *cluster.Cluster, np *networkingv1.NetworkPolicy) {
	t.Helper()
	if _, err := c.Clients.Kube.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func denyAll(ns string, types ...networkingv1.PolicyType) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "default-deny", Namespace: ns},
		Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: types},
	}
}

func allowIngressFrom(ns, name string, subject, from map[string]string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: subject},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: from}}},
			}},
		},
	}
}

// setLabel sets (value "" removes) one label of a pod.
func setLabel(t *testing.T, ctx context.Context, c *cluster.Cluster, ns, pod, key, value string) {
	t.Helper()
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, key, value)
	if value == "" {
		patch = fmt.Sprintf(`{"metadata":{"labels":{%q:null}}}`, key)
	}
	if _, err := c.Clients.Kube.CoreV1().Pods(ns).Patch(ctx, pod, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// waitReach waits until from reaches to's echo server (want true) or until a connection is
// dropped (want false).
func waitReach(t *testing.T, ctx context.Context, from, to *cluster.Pod, want bool, what string) {
	t.Helper()
	deadline := time.Now().Add(policyWait)
	var err error
	for time.Now().Before(deadline) {
		err = echo(ctx, from.Sandbox, to.IPv4())
		if want && err == nil || !want && isDropped(err) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("%s (%s -> %s): want reachable %v, last attempt: %v", what, from.IPv4(), to.IPv4(), want, errOrConnected(err))
}

// expectBlocked checks a few times that connections are dropped.
func expectBlocked(t *testing.T, ctx context.Context, from, to *cluster.Pod, what string) {
	t.Helper()
	for range 3 {
		if err := dialOnce(ctx, from.Sandbox, to.IPv4(), 300*time.Millisecond); !isDropped(err) {
			t.Errorf("%s (%s -> %s): want dropped, got %v", what, from.IPv4(), to.IPv4(), errOrConnected(err))
			return
		}
	}
}

// dialOnce opens one TCP connection to ip's echo port. A policy drop shows as a timeout; a
// refused connection means the packet reached the pod.
func dialOnce(ctx context.Context, from *underlay.Node, ip netip.Addr, timeout time.Duration) error {
	return dialPort(ctx, from, netip.AddrPortFrom(ip, echoPort), timeout)
}

func dialPort(ctx context.Context, from *underlay.Node, to netip.AddrPort, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := from.DialContext(ctx, "tcp", to.String())
	if err != nil {
		return err
	}
	conn.Close()
	return nil
}

func isDropped(err error) bool {
	return err != nil && !errors.Is(err, syscall.ECONNREFUSED) &&
		(errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded))
}

func errOrConnected(err error) string {
	if err == nil {
		return "connected"
	}
	return err.Error()
}

// hasCounterLine says whether a `twill policy counters` table has a row with a non-zero
// packet count whose other columns include every one of fields.
func hasCounterLine(table string, fields ...string) bool {
	for _, line := range strings.Split(table, "\n") {
		cols := strings.Fields(line)
		if len(cols) < 3 || cols[1] == "0" || cols[1] == "PACKETS" {
			continue
		}
		if !slices.ContainsFunc(fields, func(f string) bool { return !slices.Contains(cols, f) }) {
			return true
		}
	}
	return false
}
