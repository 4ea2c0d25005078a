package bench

import (
	"fmt"
	"math/rand/v2"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/policy"
)

// The policy suite's cluster is synthetic but shaped like a real one: namespaces with team and
// environment labels, each running a few dozen applications of several replicas, every pod
// with an "app", a "tier" and a "version" label (and a pod-template-hash no policy reads,
// which the calculator must ignore), pods spread evenly over the nodes, and per namespace a
// default deny, an ingress policy per application (its callers by pod label, a monitoring
// scrape by namespace and pod label, named ports), egress policies with ipBlocks and excepts,
// and a few broad ones (a whole environment, a port range). It is generated from a fixed seed,
// so every run measures the same cluster.

// policyWorld is the generated cluster and where it stands.
type policyWorld struct {
	size       PolicyScale
	localNode  string
	namespaces []policy.Namespace
	nodes      []policy.Node
	pods       []policy.Endpoint
	policies   []*networkingv1.NetworkPolicy
	rng        *rand.Rand
	// nextPod numbers pods the changes add, nextPolicy the policies they add.
	nextPod, nextPolicy int
}

// PolicyScale is the size of the generated cluster.
type PolicyScale struct {
	Namespaces      int // default 20
	AppsPerNS       int // default 25
	Pods            int // pod addresses in the cluster (default 10,000)
	Nodes           int // default 64: about 156 pods on each, the measured node included
	PoliciesPerNS   int // NetworkPolicies per namespace (default 50: 1,000 in all)
	ChangesPerKind  int // changes measured of each kind (default 100)
	EnforcementSpot int // every how many changes of a kind the kernel is read back (default 1: all)
}

// DefaultPolicyScale is the scale the issue asks for: 1,000 policies, 10,000 pod addresses.
var DefaultPolicyScale = PolicyScale{Namespaces: 20, AppsPerNS: 25, Pods: 10000, Nodes: 64, PoliciesPerNS: 50,
	ChangesPerKind: 100, EnforcementSpot: 1}

var tiers = []string{"web", "api", "db", "cache", "worker"}

const (
	httpPort    = 8080
	metricsPort = 9090
	// podBlockBits: node k's pods live in 10.128.k.0/24 (and above for big clusters).
	podBase = "10.128.0.0"
)

func newPolicyWorld(size PolicyScale) *policyWorld {
	w := &policyWorld{size: size, localNode: nodeName(0), rng: rand.New(rand.NewPCG(1, 2))}
	for i := range size.Namespaces {
		w.namespaces = append(w.namespaces, policy.Namespace{Name: nsName(i), Labels: map[string]string{
			"team": fmt.Sprintf("team-%d", i%5), "env": []string{"prod", "staging", "dev"}[i%3]}})
	}
	w.namespaces = append(w.namespaces, policy.Namespace{Name: "monitoring", Labels: map[string]string{"team": "sre"}})
	for k := range size.Nodes {
		w.nodes = append(w.nodes, policy.Node{Name: nodeName(k), Labels: map[string]string{"zone": fmt.Sprintf("z%d", k%3)},
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{172, 31, byte(k >> 8), byte(k)})}})
	}
	for i := range size.Pods {
		w.pods = append(w.pods, w.newPod(i))
	}
	w.nextPod = size.Pods
	for i := range size.Namespaces {
		for j := range size.PoliciesPerNS {
			w.policies = append(w.policies, w.networkPolicy(i, j))
		}
	}
	return w
}

func nsName(i int) string   { return fmt.Sprintf("ns-%02d", i) }
func nodeName(k int) string { return fmt.Sprintf("node-%02d", k) }
func appName(a int) string  { return fmt.Sprintf("app-%02d", a) }

// newPod makes pod number i: its namespace, application and node follow from i, so pods of
// one application spread over the nodes as a scheduler would spread replicas. The monitoring
// namespace gets pod 0 of every 500 (a Prometheus per shard).
func (w *policyWorld) newPod(i int) policy.Endpoint {
	node := i % w.size.Nodes
	slot := i / w.size.Nodes
	addr := netip.MustParseAddr(podBase).As4()
	n := uint32(addr[0])<<24 | uint32(addr[1])<<16 | uint32(node)<<8 | uint32(slot)
	// Past 256 pods a node, further /24s: 10.128+slot/256.node.slot%256.
	n += uint32(slot/256) << 16
	ip := netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
	ns, app := (i/7)%w.size.Namespaces, (i/3)%w.size.AppsPerNS
	e := policy.Endpoint{
		Namespace: nsName(ns), Name: fmt.Sprintf("%s-%d", appName(app), i), Node: nodeName(node),
		IPs: []netip.Addr{ip},
		Labels: map[string]string{"app": appName(app), "tier": tiers[app%len(tiers)], "version": "v1",
			"pod-template-hash": fmt.Sprintf("%08x", w.rng.Uint32())},
		Ports: []policy.ContainerPort{{Name: "http", Protocol: datapath.ProtocolTCP, Port: httpPort},
			{Name: "metrics", Protocol: datapath.ProtocolTCP, Port: metricsPort}},
	}
	if i%500 == 0 {
		e.Namespace, e.Name, e.Labels = "monitoring", fmt.Sprintf("prometheus-%d", i), map[string]string{"app": "prometheus"}
	}
	return e
}

// networkPolicy makes policy j of namespace i.
func (w *policyWorld) networkPolicy(i, j int) *networkingv1.NetworkPolicy {
	ns := nsName(i)
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("p-%02d", j)}}
	spec := &np.Spec
	apps := w.size.AppsPerNS
	switch {
	case j == 0: // default deny, ingress
		np.Name = "default-deny"
		spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	case j == 1: // scrape from monitoring, every pod
		np.Name = "allow-monitoring"
		spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
			From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: matchLabels("team", "sre"), PodSelector: matchLabels("app", "prometheus")}},
			Ports: []networkingv1.NetworkPolicyPort{namedPort("metrics")}}}
	case j-2 < apps: // one ingress policy per application: its callers
		a := j - 2
		np.Name = "allow-" + appName(a)
		spec.PodSelector = *matchLabels("app", appName(a))
		caller := (a + apps - 1) % apps
		spec.Ingress = []networkingv1.NetworkPolicyIngressRule{
			{From: []networkingv1.NetworkPolicyPeer{{PodSelector: matchLabels("app", appName(caller))}},
				Ports: []networkingv1.NetworkPolicyPort{namedPort("http"), tcpPort(8443)}},
			{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: matchLabels("team", fmt.Sprintf("team-%d", (i+1)%5)),
				PodSelector: matchLabels("tier", tiers[(a+1)%len(tiers)])}},
				Ports: []networkingv1.NetworkPolicyPort{tcpPort(httpPort)}},
		}
	case j-2-apps < 10: // egress of one application: its database, DNS in the cluster, HTTPS outside
		a := (j - 2 - apps) * 2 % apps
		np.Name = "egress-" + appName(a)
		spec.PodSelector = *matchLabels("app", appName(a))
		spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
		spec.Egress = []networkingv1.NetworkPolicyEgressRule{
			{To: []networkingv1.NetworkPolicyPeer{{PodSelector: matchLabels("tier", "db")}},
				Ports: []networkingv1.NetworkPolicyPort{tcpPort(5432)}},
			{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8", Except: []string{"10.128.0.0/9"}}}},
				Ports: []networkingv1.NetworkPolicyPort{udpPort(53), tcpPort(53)}},
			{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "0.0.0.0/0",
				Except: []string{"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"}}}},
				Ports: []networkingv1.NetworkPolicyPort{tcpPort(443)}},
		}
	default: // a mix of broader rules: environments, version canaries, port ranges, partners
		k := j - 12 - apps
		a := k % apps
		np.Name = fmt.Sprintf("misc-%02d", k)
		spec.PodSelector = *matchLabels("app", appName(a))
		switch k % 4 {
		case 0:
			spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: matchLabels("env", "prod"), PodSelector: matchLabels("tier", "web")}},
				Ports: []networkingv1.NetworkPolicyPort{rangePort(30000, 30100)}}}
		case 1:
			spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{
					MatchLabels:      map[string]string{"version": "v2"},
					MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpIn, Values: []string{"web", "api"}}}}}},
				Ports: []networkingv1.NetworkPolicyPort{tcpPort(httpPort)}}}
		case 2:
			spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{
					{IPBlock: &networkingv1.IPBlock{CIDR: fmt.Sprintf("192.0.%d.0/24", k%256), Except: []string{fmt.Sprintf("192.0.%d.128/25", k%256)}}},
					{IPBlock: &networkingv1.IPBlock{CIDR: "198.51.100.0/24"}}},
				Ports: []networkingv1.NetworkPolicyPort{tcpPort(443), tcpPort(httpPort)}}}
		case 3:
			spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{PodSelector: matchLabels("app", appName((a+3)%apps))},
					{PodSelector: matchLabels("app", appName((a+5)%apps))}}}}
		}
	}
	return np
}

func matchLabels(kv ...string) *metav1.LabelSelector {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return &metav1.LabelSelector{MatchLabels: m}
}

func tcpPort(p int32) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Protocol: protocol(corev1.ProtocolTCP), Port: intPort(p)}
}

func udpPort(p int32) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Protocol: protocol(corev1.ProtocolUDP), Port: intPort(p)}
}

func rangePort(first, last int32) networkingv1.NetworkPolicyPort {
	p := tcpPort(first)
	p.EndPort = &last
	return p
}

func namedPort(name string) networkingv1.NetworkPolicyPort {
	p := intstr.FromString(name)
	return networkingv1.NetworkPolicyPort{Protocol: protocol(corev1.ProtocolTCP), Port: &p}
}

func protocol(p corev1.Protocol) *corev1.Protocol { return &p }

func intPort(p int32) *intstr.IntOrString {
	v := intstr.FromInt32(p)
	return &v
}

// load feeds the whole cluster to a calculator, in the order an agent's informers would
// deliver it after a start (namespaces, nodes, pods, policies).
func (w *policyWorld) load(c *policy.Calculator) {
	for _, ns := range w.namespaces {
		c.UpsertNamespace(ns)
	}
	for _, n := range w.nodes {
		c.UpsertNode(n)
	}
	for _, p := range w.pods {
		c.UpsertEndpoint(p)
	}
	for _, np := range w.policies {
		c.UpsertNetworkPolicy(np)
	}
}

// localPods counts the pods on the measured node.
func (w *policyWorld) localPods() int {
	n := 0
	for _, p := range w.pods {
		if p.Node == w.localNode {
			n++
		}
	}
	return n
}
