package nftdp

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"

	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/policy"
	"github.com/twill-net/twill/internal/testutil"
)

// The kernel world, node n1: prod/web serves "http" on 8080, prod/db, dev/client; dev/remote
// is on node n2 as far as the cluster knows (its namespace hangs off this node's namespace
// only so that packets can reach it). x1 and x2 are machines outside the cluster, x2 inside
// an ipBlock's except.
var (
	tcpPorts = []uint16{80, 81, 8080}
	udpPorts = []uint16{53}
)

func kernelPolicies() []any {
	dev, prod := sel("env", "dev"), sel("env", "prod")
	udp := func(p int32) networkingv1.NetworkPolicyPort { return port(corev1.ProtocolUDP, intstr.FromInt32(p)) }
	tcp := func(p int32) networkingv1.NetworkPolicyPort { return port(corev1.ProtocolTCP, intstr.FromInt32(p)) }
	http := port(corev1.ProtocolTCP, intstr.FromString("http"))
	tcpRange := func(first, last int32) networkingv1.NetworkPolicyPort {
		p := tcp(first)
		p.EndPort = &last
		return p
	}
	ipBlock := func(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
		return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
	}
	admin := func(name string, prio int32, subject, from *metav1.LabelSelector, action v1alpha2.ClusterNetworkPolicyRuleAction,
		protos ...v1alpha2.ClusterNetworkPolicyProtocol) *v1alpha2.ClusterNetworkPolicy {
		return cnp(name, v1alpha2.AdminTier, prio, v1alpha2.ClusterNetworkPolicySubject{Namespaces: subject},
			func(s *v1alpha2.ClusterNetworkPolicySpec) {
				s.Ingress = []v1alpha2.ClusterNetworkPolicyIngressRule{{Action: action,
					From: []v1alpha2.ClusterNetworkPolicyIngressPeer{{Namespaces: from}}, Protocols: protos}}
			})
	}
	allUDP := v1alpha2.ClusterNetworkPolicyProtocol{UDP: &v1alpha2.ClusterNetworkPolicyProtocolUDP{}}
	dns := v1alpha2.ClusterNetworkPolicyProtocol{UDP: &v1alpha2.ClusterNetworkPolicyProtocolUDP{DestinationPort: &v1alpha2.Port{Number: 53}}}
	return []any{
		netpol("prod", "deny-ingress", sel(), nil),
		netpol("prod", "web-allow", sel("app", "web"), func(s *networkingv1.NetworkPolicySpec) {
			s.Ingress = []networkingv1.NetworkPolicyIngressRule{
				{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: dev}}, Ports: []networkingv1.NetworkPolicyPort{http}},
				{From: []networkingv1.NetworkPolicyPeer{ipBlock("192.0.2.0/24", "192.0.2.128/25"), ipBlock("2001:db8::/64", "2001:db8::100/120")},
					Ports: []networkingv1.NetworkPolicyPort{tcp(80)}},
				{From: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("app", "db")}}, Ports: []networkingv1.NetworkPolicyPort{udp(53), http}},
				{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: dev}}, Ports: []networkingv1.NetworkPolicyPort{udp(53)}},
				{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: dev, PodSelector: sel("app", "client")}}}, // every port
				{From: []networkingv1.NetworkPolicyPeer{ipBlock("2001:db8::/120")}},                                   // every port
				{From: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("app", "db")}}, Ports: []networkingv1.NetworkPolicyPort{tcpRange(79, 80)}},
			}
		}),
		netpol("prod", "db-egress", sel("app", "db"), func(s *networkingv1.NetworkPolicySpec) {
			s.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
			s.Egress = []networkingv1.NetworkPolicyEgressRule{
				{To: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("app", "web")}}, Ports: []networkingv1.NetworkPolicyPort{tcp(80), http}},
				{To: []networkingv1.NetworkPolicyPeer{ipBlock("0.0.0.0/0"), ipBlock("::/0")}, Ports: []networkingv1.NetworkPolicyPort{udp(53)}},
			}
		}),
		netpol("dev", "remote-lockdown", sel("app", "remote"), func(s *networkingv1.NetworkPolicySpec) {
			s.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
		}),
		admin("pass-dev-dns", 1, prod, dev, v1alpha2.ClusterNetworkPolicyRuleActionPass, dns),
		admin("allow-client-81", 5, prod, dev, v1alpha2.ClusterNetworkPolicyRuleActionAccept, tcpPort(81)),
		admin("no-81-from-prod", 10, dev, prod, v1alpha2.ClusterNetworkPolicyRuleActionDeny, tcpPort(81)),
		admin("deny-dev-udp", 30, prod, dev, v1alpha2.ClusterNetworkPolicyRuleActionDeny, allUDP),
		cnp("dev-no-docs", v1alpha2.BaselineTier, 10, v1alpha2.ClusterNetworkPolicySubject{Namespaces: dev},
			func(s *v1alpha2.ClusterNetworkPolicySpec) {
				s.Egress = []v1alpha2.ClusterNetworkPolicyEgressRule{{Action: v1alpha2.ClusterNetworkPolicyRuleActionDeny,
					To: []v1alpha2.ClusterNetworkPolicyEgressPeer{{Networks: []v1alpha2.CIDR{"192.0.2.0/24", "2001:db8::/32"}}}}}
			}),
	}
}

func kernelWorld() *policy.Calculator {
	c := policy.NewCalculator()
	upsert(c, kernelPolicies()...)
	upsert(c,
		policy.Namespace{Name: "prod", Labels: labels("env", "prod")},
		policy.Namespace{Name: "dev", Labels: labels("env", "dev")},
		policy.Node{Name: "n1", IPs: addrs("172.31.0.1", "fd00:31::1")},
		policy.Node{Name: "n2", IPs: addrs("172.31.0.2")},
		policy.Endpoint{Namespace: "prod", Name: "web", Labels: labels("app", "web"), Node: "n1", IPs: addrs("10.0.1.1", "fd00:1::1"),
			Ports: []policy.ContainerPort{{Name: "http", Protocol: datapath.ProtocolTCP, Port: 8080}}},
		policy.Endpoint{Namespace: "prod", Name: "db", Labels: labels("app", "db"), Node: "n1", IPs: addrs("10.0.1.2", "fd00:1::2")},
		policy.Endpoint{Namespace: "dev", Name: "client", Labels: labels("app", "client"), Node: "n1", IPs: addrs("10.0.2.3", "fd00:2::3")},
		policy.Endpoint{Namespace: "dev", Name: "remote", Labels: labels("app", "remote"), Node: "n2", IPs: addrs("10.0.3.4", "fd00:3::4")},
	)
	return c
}

type kernelLab struct {
	*lab
	r   *Reconciler
	ns  map[string]*testNS
	sem chan struct{}
}

func newKernelLab(t *testing.T) *kernelLab {
	testutil.RequireRoot(t)
	l := newLab(t, "172.31.0.1", "fd00:31::1")
	k := &kernelLab{lab: l, ns: map[string]*testNS{"node": l.node}, sem: make(chan struct{}, 128)}
	for name, a := range map[string][]string{
		"web": {"10.0.1.1", "fd00:1::1"}, "db": {"10.0.1.2", "fd00:1::2"}, "client": {"10.0.2.3", "fd00:2::3"},
		"remote": {"10.0.3.4", "fd00:3::4"}, "x1": {"192.0.2.10", "2001:db8::10"}, "x2": {"192.0.2.200", "2001:db8::200"},
	} {
		k.ns[name] = l.pod(name, a...)
	}
	for _, n := range k.ns {
		serve(t, n, tcpPorts, udpPorts)
	}
	l.must(l.inNode(func() error {
		var err error
		k.r, err = NewKernel("n1", nil)
		return err
	}))
	return k
}

// probe is one connection attempt and what came of it.
type probe struct {
	src, dst string
	v6       bool
	proto    datapath.Protocol
	port     uint16
}

// protocolPing stands for an ICMP (or ICMPv6) echo in probes.
const protocolPing datapath.Protocol = 1

func (p probe) String() string {
	fam := "v4"
	if p.v6 {
		fam = "v6"
	}
	if p.proto == protocolPing {
		return fmt.Sprintf("%s -> %s ping %s", p.src, p.dst, fam)
	}
	return fmt.Sprintf("%s -> %s %d/%s %s", p.src, p.dst, p.port, p.proto, fam)
}

func (p probe) packet(k *kernelLab) datapath.Packet {
	proto := p.proto
	if proto == protocolPing && p.v6 {
		proto = 58
	}
	return datapath.Packet{Src: k.ns[p.src].addr(p.v6), Dst: k.ns[p.dst].addr(p.v6), Protocol: proto, Port: p.port}
}

// run sends the probe; an attempt that fails is tried once more with a longer wait, so a
// slow first packet is not taken for a drop (a drop never looks like a success).
func (k *kernelLab) run(p probe) (bool, error) {
	dst := netip.AddrPortFrom(k.ns[p.dst].addr(p.v6), p.port)
	try := func(timeout time.Duration) (bool, error) {
		if p.proto == protocolPing {
			return ping(k.ns[p.src], dst.Addr(), timeout)
		}
		return exchange(k.ns[p.src], p.proto, dst, timeout)
	}
	ok, err := try(400 * time.Millisecond)
	if ok || err != nil {
		return ok, err
	}
	return try(time.Second)
}

// runAll runs probes concurrently and returns their outcomes in order.
func (k *kernelLab) runAll(t *testing.T, probes []probe) []bool {
	t.Helper()
	got := make([]bool, len(probes))
	var wg sync.WaitGroup
	for i, p := range probes {
		wg.Go(func() {
			k.sem <- struct{}{}
			defer func() { <-k.sem }()
			ok, err := k.run(p)
			if err != nil {
				t.Errorf("%s: %v", p, err)
			}
			got[i] = ok
		})
	}
	wg.Wait()
	return got
}

func matrix() []probe {
	var probes []probe
	for _, src := range []string{"web", "db", "client", "x1", "x2", "node"} {
		for _, dst := range []string{"web", "db", "client", "x1", "node"} {
			if src == dst {
				continue
			}
			for _, v6 := range []bool{false, true} {
				for _, p := range tcpPorts {
					probes = append(probes, probe{src: src, dst: dst, v6: v6, proto: datapath.ProtocolTCP, port: p})
				}
				for _, p := range udpPorts {
					probes = append(probes, probe{src: src, dst: dst, v6: v6, proto: datapath.ProtocolUDP, port: p})
				}
				probes = append(probes, probe{src: src, dst: dst, v6: v6, proto: protocolPing})
			}
		}
	}
	return probes
}

// checkMatrix sends every probe of the matrix and wants the kernel to decide each exactly as
// the evaluator does. It returns the evaluator's verdicts for further checks.
func (k *kernelLab) checkMatrix(t *testing.T, s *datapath.PolicyState) map[string]datapath.Verdict {
	t.Helper()
	ev := datapath.NewPolicyEvaluator(s)
	probes := matrix()
	start := time.Now()
	got := k.runAll(t, probes)
	verdicts := map[string]datapath.Verdict{}
	allowed := 0
	for i, p := range probes {
		v := ev.Evaluate(p.packet(k))
		verdicts[p.String()] = v
		if v.Allowed {
			allowed++
		}
		if got[i] != v.Allowed {
			var why []string
			for _, d := range v.Decisions {
				why = append(why, d.String())
			}
			t.Errorf("%s: kernel allowed=%v, evaluator allowed=%v (%s)", p, got[i], v.Allowed, strings.Join(why, "; "))
		}
	}
	t.Logf("%d probes (%d allowed by the evaluator) in %s", len(probes), allowed, time.Since(start).Round(time.Millisecond))
	return verdicts
}

func (k *kernelLab) counters(t *testing.T) map[string]datapath.PolicyCounter {
	t.Helper()
	var out map[string]datapath.PolicyCounter
	k.must(k.inNode(func() error {
		var err error
		out, err = k.r.PolicyCounters(context.Background())
		return err
	}))
	return out
}

// TestKernelEnforcesAsEvaluator applies the kernel world and compares a matrix of real TCP
// and UDP exchanges (both families, pods, outside machines and the node itself) with the
// evaluator; then checks the cases the matrix must contain, the counters, and that an
// incremental update is enforced the same way.
func TestKernelEnforcesAsEvaluator(t *testing.T) {
	k := newKernelLab(t)
	c := kernelWorld()
	s := state(c)
	k.apply(k.r, s)
	verdicts := k.checkMatrix(t, s)

	// The matrix holds the cases that matter, decided as intended.
	for _, want := range []struct {
		probe   string
		allowed bool
		by      string
	}{
		{"client -> web 8080/TCP v4", true, "networkpolicy/prod/web-allow/ingress/0"}, // named port
		{"client -> web 80/TCP v4", true, "networkpolicy/prod/web-allow/ingress/4"},   // every port of a peer
		{"client -> web ping v6", true, "networkpolicy/prod/web-allow/ingress/4"},
		{"x1 -> web ping v6", true, "networkpolicy/prod/web-allow/ingress/5"}, // every port of a range
		{"x1 -> web 81/TCP v6", true, "networkpolicy/prod/web-allow/ingress/5"},
		{"x1 -> web 81/TCP v4", false, "default deny"},
		{"x2 -> web ping v6", false, "default deny"},
		{"client -> x1 ping v4", false, "baseline/dev-no-docs/egress/0"},
		{"x1 -> web 80/TCP v6", true, "networkpolicy/prod/web-allow/ingress/1"},  // ipBlock
		{"x2 -> web 80/TCP v4", false, "default deny"},                           // its except
		{"db -> web 8080/TCP v4", true, "networkpolicy/prod/db-egress/egress/0"}, // egress named port; its replies pass db's ingress isolation
		{"db -> web 80/TCP v6", true, "networkpolicy/prod/web-allow/ingress/6"},  // a port range of a peer identity
		{"web -> db 80/TCP v4", false, "default deny"},                           // db: default-deny pod
		{"db -> client 80/TCP v4", false, "default deny"},                        // db's egress
		{"db -> x1 53/UDP v6", true, "networkpolicy/prod/db-egress/egress/1"},
		{"client -> web 81/TCP v4", true, "admin/allow-client-81/ingress/0"},  // admin Accept over an isolation
		{"web -> client 81/TCP v4", false, "admin/no-81-from-prod/ingress/0"}, // admin Deny
		{"client -> web 53/UDP v4", true, "admin/pass-dev-dns/ingress/0"},     // Pass, then NetworkPolicy allows
		{"client -> db 53/UDP v4", false, "default deny"},                     // Pass, then NetworkPolicy denies
		{"client -> x1 80/TCP v4", false, "baseline/dev-no-docs/egress/0"},
		{"node -> db 80/TCP v6", true, "own node"},
		{"db -> node 53/UDP v4", true, "networkpolicy/prod/db-egress/egress/1"}, // pod to node: input hook
	} {
		v, ok := verdicts[want.probe]
		if !ok {
			t.Fatalf("the matrix lacks %s", want.probe)
		}
		var why []string
		for _, d := range v.Decisions {
			why = append(why, d.String())
			if d.Policy.Name != "" {
				why = append(why, d.ID())
			}
		}
		if v.Allowed != want.allowed || !strings.Contains(strings.Join(why, "; "), want.by) {
			t.Errorf("%s: evaluator allowed=%v by %q, want %v by %s", want.probe, v.Allowed, why, want.allowed, want.by)
		}
	}

	counters := k.counters(t)
	for _, key := range []string{"networkpolicy/prod/web-allow/ingress/0", "networkpolicy/prod/db-egress/egress/0",
		datapath.DefaultDenyCounter(datapath.Ingress), datapath.DefaultDenyCounter(datapath.Egress),
		"admin/no-81-from-prod/ingress/0", "admin/allow-client-81/ingress/0", "baseline/dev-no-docs/egress/0", datapath.CounterOwnNode} {
		if counters[key].Packets == 0 {
			t.Errorf("counter %s is 0 after the matrix", key)
		}
	}
	// One more drop by the admin Deny counts there.
	before := counters["admin/no-81-from-prod/ingress/0"].Packets
	if ok, err := k.run(probe{src: "web", dst: "client", proto: datapath.ProtocolTCP, port: 81}); ok || err != nil {
		t.Fatalf("web -> client 81/TCP: allowed=%v err=%v, want dropped", ok, err)
	}
	if after := k.counters(t)["admin/no-81-from-prod/ingress/0"].Packets; after <= before {
		t.Errorf("admin/no-81-from-prod/ingress/0 counted %d then %d packets around a drop", before, after)
	}

	// An update: db loses its ingress isolation; the kernel follows with an update alone.
	c.DeleteNetworkPolicy("prod", "deny-ingress")
	s = state(c)
	k.apply(k.r, s)
	if st := k.r.Stats(); st.Rebuilds != 1 || st.Updates != 1 || st.Failures != 0 {
		t.Errorf("stats %+v, want the change applied as an update", st)
	}
	if v := k.checkMatrix(t, s)["web -> db 80/TCP v4"]; !v.Allowed {
		t.Errorf("web -> db 80/TCP v4 still denied by the evaluator after removing deny-ingress")
	}
}

// TestKernelEnforcesOnlyLocalPods: dev/remote is on node n2 and locked down both ways. This
// node enforces neither direction of its traffic (n2 does), while its own pods' policies
// still apply to traffic from it.
func TestKernelEnforcesOnlyLocalPods(t *testing.T) {
	k := newKernelLab(t)
	s := state(kernelWorld())
	k.apply(k.r, s)
	ev := datapath.NewPolicyEvaluator(s)
	for _, tc := range []struct {
		p          probe
		kernel     bool
		clusterNow bool // the evaluator's verdict for the whole cluster
	}{
		{probe{src: "remote", dst: "client", proto: datapath.ProtocolTCP, port: 80}, true, false}, // remote's egress: n2's
		{probe{src: "client", dst: "remote", proto: datapath.ProtocolTCP, port: 80}, true, false}, // remote's ingress: n2's
		{probe{src: "remote", dst: "web", proto: datapath.ProtocolTCP, port: 80}, false, false},   // web's ingress: ours
		{probe{src: "remote", dst: "web", proto: datapath.ProtocolTCP, port: 8080, v6: true}, true, false},
	} {
		if v := ev.Evaluate(tc.p.packet(k)); v.Allowed != tc.clusterNow {
			t.Errorf("%s: evaluator allowed=%v, want %v", tc.p, v.Allowed, tc.clusterNow)
		}
		if ok, err := k.run(tc.p); ok != tc.kernel || err != nil {
			t.Errorf("%s: kernel of n1 allowed=%v (err %v), want %v", tc.p, ok, err, tc.kernel)
		}
	}
}

// TestKernelAcceptsEveryUpdate replays random events against the real nft in a namespace of
// its own: every update must be accepted as it is (no refused transaction, no rebuild).
func TestKernelAcceptsEveryUpdate(t *testing.T) {
	testutil.RequireRoot(t)
	l := newLab(t)
	var r *Reconciler
	l.must(l.inNode(func() error {
		var err error
		r, err = NewKernel("n1", nil)
		return err
	}))
	c := newWorld()
	events := newEvents(7)
	l.apply(r, state(c))
	for step := range 60 {
		what := events.next(c)
		if err := l.inNode(func() error { return r.ApplyPolicy(context.Background(), state(c)) }); err != nil {
			t.Fatalf("step %d (%s): %v", step, what, err)
		}
	}
	if st := r.Stats(); st.Rebuilds != 1 || st.Failures != 0 {
		t.Errorf("stats %+v, want every apply after the first accepted as an update", st)
	}
}
