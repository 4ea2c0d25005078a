package nftdp

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/knftables"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"

	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/policy"
)

// The incremental world: namespaces x (prod) and y (dev), nodes n1 (ours) and n2; x/a serves
// "http" on 8080, x/b is a database whose egress is limited, y/c is a client on n2 and y/d
// one on n1.
func worldPolicies() []any {
	return []any{
		netpol("x", "deny-all", sel(), nil),
		netpol("x", "web-from-dev", sel("app", "web"), func(s *networkingv1.NetworkPolicySpec) {
			s.Ingress = []networkingv1.NetworkPolicyIngressRule{
				{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel("env", "dev")}},
					Ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolTCP, intstr.FromString("http"))}},
				{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "192.0.2.0/24", Except: []string{"192.0.2.128/25"}}}},
					Ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolTCP, intstr.FromInt32(80))}},
			}
		}),
		netpol("x", "db-egress", sel("app", "db"), func(s *networkingv1.NetworkPolicySpec) {
			s.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
			s.Egress = []networkingv1.NetworkPolicyEgressRule{
				{To: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("app", "web")}},
					Ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolTCP, intstr.FromInt32(80)), port(corev1.ProtocolTCP, intstr.FromString("http"))}},
				{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "0.0.0.0/0"}}},
					Ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolUDP, intstr.FromInt32(53))}},
			}
		}),
		cnp("no-ssh", v1alpha2.AdminTier, 10, v1alpha2.ClusterNetworkPolicySubject{Namespaces: sel("env", "prod")},
			func(s *v1alpha2.ClusterNetworkPolicySpec) {
				s.Ingress = []v1alpha2.ClusterNetworkPolicyIngressRule{{Action: v1alpha2.ClusterNetworkPolicyRuleActionDeny,
					From:      []v1alpha2.ClusterNetworkPolicyIngressPeer{{Namespaces: sel("env", "dev")}},
					Protocols: []v1alpha2.ClusterNetworkPolicyProtocol{tcpPort(22)}}}
			}),
		cnp("dev-outside", v1alpha2.BaselineTier, 10, v1alpha2.ClusterNetworkPolicySubject{Namespaces: sel("env", "dev")},
			func(s *v1alpha2.ClusterNetworkPolicySpec) {
				s.Egress = []v1alpha2.ClusterNetworkPolicyEgressRule{{Action: v1alpha2.ClusterNetworkPolicyRuleActionDeny,
					To: []v1alpha2.ClusterNetworkPolicyEgressPeer{{Networks: []v1alpha2.CIDR{"192.0.2.0/24"}}}}}
			}),
	}
}

func newWorld() *policy.Calculator {
	c := policy.NewCalculator()
	upsert(c, worldPolicies()...)
	upsert(c,
		policy.Namespace{Name: "x", Labels: labels("env", "prod")},
		policy.Namespace{Name: "y", Labels: labels("env", "dev")},
		policy.Node{Name: "n1", IPs: addrs("172.31.0.1", "fd00:31::1")},
		policy.Node{Name: "n2", IPs: addrs("172.31.0.2")},
		policy.Endpoint{Namespace: "x", Name: "a", Labels: labels("app", "web"), Node: "n1", IPs: addrs("10.0.1.1", "fd00:1::1"),
			Ports: []policy.ContainerPort{{Name: "http", Protocol: datapath.ProtocolTCP, Port: 8080}}},
		policy.Endpoint{Namespace: "x", Name: "b", Labels: labels("app", "db"), Node: "n1", IPs: addrs("10.0.1.2")},
		policy.Endpoint{Namespace: "y", Name: "c", Labels: labels("app", "client"), Node: "n2", IPs: addrs("10.0.2.3")},
		policy.Endpoint{Namespace: "y", Name: "d", Labels: labels("app", "client"), Node: "n1", IPs: addrs("10.0.1.4")},
	)
	return c
}

// applied returns a fake table holding the world's state, and its reconciler.
func applied(t *testing.T, c *policy.Calculator) (*knftables.Fake, *Reconciler) {
	t.Helper()
	fake := knftables.NewFake(TableFamily, TableName)
	r := New(fake, "n1", nil)
	if err := r.ApplyPolicy(context.Background(), state(c)); err != nil {
		t.Fatal(err)
	}
	return fake, r
}

func lastTransaction(fake *knftables.Fake) []string {
	fake.RLock()
	defer fake.RUnlock()
	return strings.Split(strings.TrimSpace(fake.LastTransaction.String()), "\n")
}

func TestNewLocalPodChangesOnlyElements(t *testing.T) {
	c := newWorld()
	fake, r := applied(t, c)
	upsert(c, policy.Endpoint{Namespace: "x", Name: "a2", Labels: labels("app", "web"), Node: "n1", IPs: addrs("10.0.1.5"),
		Ports: []policy.ContainerPort{{Name: "http", Protocol: datapath.ProtocolTCP, Port: 8080}}})
	if err := r.ApplyPolicy(context.Background(), state(c)); err != nil {
		t.Fatal(err)
	}
	tx := lastTransaction(fake)
	for _, line := range tx {
		if !strings.HasPrefix(line, "add element ") {
			t.Errorf("a new pod with known labels changed more than set elements: %s", line)
		}
	}
	joined := strings.Join(tx, "\n")
	for _, want := range []string{"local4 { 10.0.1.5 }", "ids4 { 10.0.1.5 : ", "s4-isolated-ingress { 10.0.1.5 }",
		"n4-http { 10.0.1.5 . tcp . 8080 }", "np-ingress4-idport { 10.0.1.5 . "} {
		if !strings.Contains(joined, want) {
			t.Errorf("transaction lacks %q:\n%s", want, joined)
		}
	}
	t.Logf("transaction for one new local pod (%d operations):\n%s", len(tx), joined)
	if st := r.Stats(); st.Rebuilds != 1 || st.Updates != 1 {
		t.Errorf("stats %+v, want one rebuild then one update", st)
	}
}

func TestNewRemotePodChangesOnlyItsAddress(t *testing.T) {
	c := newWorld()
	fake, r := applied(t, c)
	upsert(c, policy.Endpoint{Namespace: "y", Name: "e", Labels: labels("app", "client"), Node: "n2", IPs: addrs("10.0.2.9")})
	if err := r.ApplyPolicy(context.Background(), state(c)); err != nil {
		t.Fatal(err)
	}
	id := state(c).Endpoints[netip.MustParseAddr("10.0.2.9")].Identity
	want := []string{fmt.Sprintf("add element inet twill ids4 { 10.0.2.9 : %d }", id)}
	if got := lastTransaction(fake); !slices.Equal(got, want) {
		t.Errorf("transaction for a pod on another node with known labels:\n%s\nwant:\n%s", strings.Join(got, "\n"), want[0])
	}
}

func TestUnchangedStateRunsNothing(t *testing.T) {
	c := newWorld()
	_, r := applied(t, c)
	if err := r.ApplyPolicy(context.Background(), state(c)); err != nil {
		t.Fatal(err)
	}
	if st := r.Stats(); st.Unchanged != 1 || st.Updates != 0 {
		t.Errorf("stats %+v, want the second apply to find nothing to do", st)
	}
}

// A new admin policy rewrites the admin chains of its direction and nothing else of the rules.
func TestPolicyChangeRewritesOnlyItsTier(t *testing.T) {
	c := newWorld()
	fake, r := applied(t, c)
	upsert(c, cnp("no-telnet", v1alpha2.AdminTier, 20, v1alpha2.ClusterNetworkPolicySubject{Namespaces: sel("env", "prod")},
		func(s *v1alpha2.ClusterNetworkPolicySpec) {
			s.Ingress = []v1alpha2.ClusterNetworkPolicyIngressRule{{Action: v1alpha2.ClusterNetworkPolicyRuleActionDeny,
				From:      []v1alpha2.ClusterNetworkPolicyIngressPeer{{Namespaces: sel()}},
				Protocols: []v1alpha2.ClusterNetworkPolicyProtocol{tcpPort(23)}}}
		}))
	if err := r.ApplyPolicy(context.Background(), state(c)); err != nil {
		t.Fatal(err)
	}
	var flushed []string
	for _, line := range lastTransaction(fake) {
		if strings.HasPrefix(line, "flush chain ") {
			flushed = append(flushed, strings.Fields(line)[4])
		}
	}
	if want := []string{"ingress4-admin", "ingress6-admin"}; !slices.Equal(flushed, want) {
		t.Errorf("flushed chains %v, want %v", flushed, want)
	}
}

// canonical orders a fake dump so that two tables with the same content compare equal: rules
// keep their order (it matters), set elements are sorted (it does not).
func canonical(dump string) string {
	var rest, elems []string
	for _, line := range strings.Split(dump, "\n") {
		if strings.HasPrefix(line, "add element ") {
			elems = append(elems, line)
		} else {
			rest = append(rest, line)
		}
	}
	slices.Sort(elems)
	return strings.Join(append(rest, elems...), "\n")
}

func rebuilt(t *testing.T, s *datapath.PolicyState) string {
	t.Helper()
	fake := knftables.NewFake(TableFamily, TableName)
	if err := New(fake, "n1", nil).ApplyPolicy(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	return canonical(fake.Dump())
}

// TestUpdatesEqualRebuilds replays random events (pods coming, going and relabelled,
// namespaces relabelled, policies added and removed) and checks after each that the table
// the updates made is exactly the table a rebuild from the same state makes.
func TestUpdatesEqualRebuilds(t *testing.T) {
	c := newWorld()
	fake, r := applied(t, c)
	events := newEvents(4)
	for step := range 150 {
		what := events.next(c)
		s := state(c)
		if err := r.ApplyPolicy(context.Background(), s); err != nil {
			t.Fatalf("step %d (%s): %v", step, what, err)
		}
		if got, want := canonical(fake.Dump()), rebuilt(t, s); got != want {
			t.Fatalf("step %d (%s): the updated table differs from a rebuild:\n%s", step, what, lineDiff(got, want))
		}
	}
	if st := r.Stats(); st.Rebuilds != 1 || st.Failures != 0 {
		t.Errorf("stats %+v, want every apply after the first to be an update", st)
	}
}

func lineDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	var b strings.Builder
	for _, l := range g {
		if !slices.Contains(w, l) {
			b.WriteString("+ " + l + "\n")
		}
	}
	for _, l := range w {
		if !slices.Contains(g, l) {
			b.WriteString("- " + l + "\n")
		}
	}
	return b.String()
}

// A reconciler starting over a table left by an earlier run (with objects this state does
// not have) replaces it whole in one transaction.
func TestFirstApplyReplacesLeftovers(t *testing.T) {
	fake := knftables.NewFake(TableFamily, TableName)
	tx := fake.NewTransaction()
	tx.Add(&knftables.Table{})
	tx.Add(&knftables.Chain{Name: "stale"})
	tx.Add(&knftables.Rule{Chain: "stale", Rule: "drop"})
	tx.Add(&knftables.Set{Name: "stale-set", Type: "ipv4_addr"})
	if err := fake.Run(context.Background(), tx); err != nil {
		t.Fatal(err)
	}
	c := newWorld()
	if err := New(fake, "n1", nil).ApplyPolicy(context.Background(), state(c)); err != nil {
		t.Fatal(err)
	}
	if got, want := canonical(fake.Dump()), rebuilt(t, state(c)); got != want {
		t.Errorf("leftovers survived the first apply:\n%s", lineDiff(got, want))
	}
	if tx := lastTransaction(fake); tx[0] != "add table inet twill" || tx[1] != "delete table inet twill" {
		t.Errorf("the first apply does not replace the table in its transaction: starts %q, %q", tx[0], tx[1])
	}
}

// When someone changed the table behind the reconciler's back, the update is refused and the
// table rebuilt in the same apply.
func TestRefusedUpdateRebuilds(t *testing.T) {
	c := newWorld()
	fake, _ := applied(t, c)
	r := New(fake, "n1", slog.New(slog.DiscardHandler))
	if err := r.ApplyPolicy(context.Background(), state(c)); err != nil {
		t.Fatal(err)
	}
	tx := fake.NewTransaction()
	tx.Delete(&knftables.Element{Set: "local4", Key: []string{"10.0.1.4"}})
	if err := fake.Run(context.Background(), tx); err != nil {
		t.Fatal(err)
	}
	c.DeleteEndpoint("y", "d") // the update would delete 10.0.1.4 from local4: not there
	if err := r.ApplyPolicy(context.Background(), state(c)); err != nil {
		t.Fatal(err)
	}
	if st := r.Stats(); st.Failures != 1 || st.Rebuilds != 2 {
		t.Errorf("stats %+v, want one refused update and a second rebuild", st)
	}
	if got, want := canonical(fake.Dump()), rebuilt(t, state(c)); got != want {
		t.Errorf("table after the rebuild:\n%s", lineDiff(got, want))
	}
}

// events makes random changes to the incremental world: pods coming, going and relabelled
// (on either node, with and without IPv6 and a named port), namespaces relabelled, policies
// removed and added back.
type events struct {
	rng     *rand.Rand
	pool    []any
	present []bool
}

func newEvents(seed uint64) *events {
	e := &events{rng: rand.New(rand.NewPCG(seed, seed+1)), pool: worldPolicies()}
	e.present = make([]bool, len(e.pool))
	for i := range e.present {
		e.present[i] = true
	}
	return e
}

// next makes one change and says what it was.
func (e *events) next(c *policy.Calculator) string {
	rng := e.rng
	switch rng.IntN(5) {
	case 0, 1:
		i := rng.IntN(12)
		ns := []string{"x", "y", "z"}[rng.IntN(3)]
		ep := policy.Endpoint{Namespace: ns, Name: fmt.Sprintf("p%d", i),
			Labels: labels("app", []string{"web", "db", "client", "cache"}[rng.IntN(4)]),
			Node:   []string{"n1", "n2"}[rng.IntN(2)], IPs: addrs(fmt.Sprintf("10.1.%d.%d", i, 1+rng.IntN(3)))}
		if rng.IntN(2) == 0 {
			ep.IPs = append(ep.IPs, netip.MustParseAddr(fmt.Sprintf("fd00:1::%x", 0x100+i)))
		}
		if rng.IntN(2) == 0 {
			ep.Ports = []policy.ContainerPort{{Name: "http", Protocol: datapath.ProtocolTCP, Port: uint16(8000 + rng.IntN(3))}}
		}
		upsert(c, ep)
		return fmt.Sprintf("upsert pod %s/%s %v on %s", ns, ep.Name, ep.Labels, ep.Node)
	case 2:
		i := rng.IntN(12)
		for _, ns := range []string{"x", "y", "z"} {
			c.DeleteEndpoint(ns, fmt.Sprintf("p%d", i))
		}
		return fmt.Sprintf("delete pod p%d", i)
	case 3:
		env := []string{"prod", "dev", "test"}[rng.IntN(3)]
		ns := []string{"x", "y", "z"}[rng.IntN(3)]
		upsert(c, policy.Namespace{Name: ns, Labels: labels("env", env)})
		return "label namespace " + ns + " env=" + env
	}
	i := rng.IntN(len(e.pool))
	if e.present[i] {
		switch p := e.pool[i].(type) {
		case *networkingv1.NetworkPolicy:
			c.DeleteNetworkPolicy(p.Namespace, p.Name)
		case *v1alpha2.ClusterNetworkPolicy:
			c.DeleteClusterNetworkPolicy(p.Name)
		}
	} else {
		upsert(c, e.pool[i])
	}
	e.present[i] = !e.present[i]
	return fmt.Sprintf("toggle policy %d", i)
}

// PolicyCounters reports every rule's counter by its attribution ID, and the verdicts no rule
// makes by their keys.
func TestPolicyCountersAreKeyedByAttribution(t *testing.T) {
	fake := knftables.NewFake(TableFamily, TableName)
	r := New(fake, "n1", nil)
	s := goldenState()
	if err := r.ApplyPolicy(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	counters, err := r.PolicyCounters(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{datapath.DefaultDenyCounter(datapath.Ingress), datapath.DefaultDenyCounter(datapath.Egress),
		datapath.CounterOwnNode, datapath.CounterInvalid}
	for _, d := range []*datapath.DirectionPolicy{&s.Ingress, &s.Egress} {
		for _, rules := range [][]datapath.Rule{d.Admin, d.NetworkPolicy, d.Baseline} {
			for _, rule := range rules {
				want = append(want, rule.ID())
			}
		}
	}
	for _, key := range want {
		if _, ok := counters[key]; !ok {
			t.Errorf("no counter %s", key)
		}
	}
	if len(counters) != len(want) {
		t.Errorf("%d counters, want %d", len(counters), len(want))
	}
}
