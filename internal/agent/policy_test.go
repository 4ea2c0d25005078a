package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apiextfake "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset/fake"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/twill-net/twill/internal/cniserver"
	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/ipam"
	"github.com/twill-net/twill/internal/kube"
)

var (
	clientIP = netip.MustParseAddr("10.244.1.5")
	newPodIP = netip.MustParseAddr("10.244.0.7")
)

// startEnforcer runs a policy enforcer for node n1 against a fake API holding objs.
func startEnforcer(t *testing.T, objs ...any) (*policyEnforcer, *datapath.FakePolicy) {
	t.Helper()
	client := fake.NewClientset()
	for _, o := range objs {
		var err error
		switch o := o.(type) {
		case *corev1.Pod:
			_, err = client.CoreV1().Pods(o.Namespace).Create(context.Background(), o, metav1.CreateOptions{})
		case *networkingv1.NetworkPolicy:
			_, err = client.NetworkingV1().NetworkPolicies(o.Namespace).Create(context.Background(), o, metav1.CreateOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	dp := &datapath.FakePolicy{}
	p, err := newPolicyEnforcer(&kube.Clients{Kube: client, APIExt: apiextfake.NewClientset()}, factory, "n1", dp, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); factory.Shutdown() })
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), p.synced...) {
		t.Fatal("caches did not sync")
	}
	// Without the ClusterNetworkPolicy CRD the enforcer goes on with NetworkPolicies alone.
	go p.watchClusterNetworkPolicies(ctx)
	deadline := time.Now().Add(5 * time.Second)
	for !p.cnpSynced.Load() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !p.cnpSynced.Load() {
		t.Fatal("the absent ClusterNetworkPolicy CRD was never noticed")
	}
	return p, dp
}

func labelledPod(name, node, ip string, labels map[string]string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID("uid-" + name), Labels: labels},
		Spec: corev1.PodSpec{NodeName: node}}
	if ip != "" {
		p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	}
	return p
}

func allowFromClients() *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "allow-clients"},
		Spec: networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
				PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "client"}}}}}},
		},
	}
}

func verdict(s *datapath.PolicyState, src, dst netip.Addr) bool {
	return datapath.NewPolicyEvaluator(s).Evaluate(datapath.Packet{Src: src, Dst: dst, Protocol: datapath.ProtocolTCP, Port: 80}).Allowed
}

// The state applied before ADD answers already holds the new pod (whose status has no address
// yet) with its labels: a client allowed by policy gets in, another pod does not.
func TestBeforeReadyAppliesTheNewPodsPolicy(t *testing.T) {
	other := netip.MustParseAddr("10.244.1.6")
	p, dp := startEnforcer(t,
		labelledPod("client", "n2", clientIP.String(), map[string]string{"role": "client"}),
		labelledPod("other", "n2", other.String(), nil),
		labelledPod("new", "n1", "", map[string]string{"app": "web"}),
		allowFromClients())
	ep := cniserver.Endpoint{PodNamespace: "ns", PodName: "new", PodUID: "uid-new", ContainerID: "c1", IfName: "eth0",
		IPs: []netip.Addr{newPodIP}}
	if err := p.beforeReady(context.Background(), ep); err != nil {
		t.Fatal(err)
	}
	s := dp.Last()
	if s == nil {
		t.Fatal("nothing applied before ADD answered")
	}
	if e := s.Endpoints[newPodIP]; e.Pod.Name != "new" || e.Node != "n1" {
		t.Errorf("applied state has %s as %+v, want pod ns/new on n1", newPodIP, e)
	}
	if !verdict(s, clientIP, newPodIP) {
		t.Error("allowed client cannot reach the new pod")
	}
	if verdict(s, other, newPodIP) {
		t.Error("a pod no rule allows reaches the new pod")
	}

	// The pod's status update (without addresses) must not take the address away.
	pod := labelledPod("new", "n1", "", map[string]string{"app": "web", "tier": "x"})
	p.upsertPod(pod)
	if st := p.calc.State(); st.Endpoints[newPodIP].Pod.Name != "new" {
		t.Error("an update of the pod without status addresses dropped the address the CNI gave")
	}

	// Releasing the attachment's addresses takes them out of the policy state.
	w := releaseWatcher{Allocator: nopAllocator{}, onRelease: p.released}
	if err := w.Release(context.Background(), ipam.Handle{ContainerID: "c1", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if st := p.calc.State(); st.Endpoints[newPodIP].Pod.Name != "" {
		t.Errorf("released address still in the policy state: %+v", st.Endpoints[newPodIP])
	}
}

// A pod the cache has not seen yet is read from the API; a datapath that refuses the state
// fails the ADD.
func TestBeforeReadyReadsLatePodsAndFailsWithTheDatapath(t *testing.T) {
	p, dp := startEnforcer(t, allowFromClients())
	late := labelledPod("late", "n1", "", map[string]string{"app": "web"})
	if _, err := p.clients.Kube.CoreV1().Pods("ns").Create(context.Background(), late, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dp.SetErr(errors.New("nft refused"))
	err := p.beforeReady(context.Background(), cniserver.Endpoint{PodNamespace: "ns", PodName: "late", PodUID: "uid-late",
		ContainerID: "c2", IfName: "eth0", IPs: []netip.Addr{newPodIP}})
	if err == nil {
		t.Fatal("ADD hook succeeded although the datapath refused the state")
	}
	if p.ready() == nil {
		t.Error("enforcer ready although no state was ever applied")
	}
	dp.SetErr(nil)
	if err := p.apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	if p.ready() != nil {
		t.Error("enforcer not ready after a successful apply")
	}
	if e := dp.Last().Endpoints[newPodIP]; e.Pod.Name != "late" {
		t.Errorf("pod read from the API is %+v in the state, want ns/late", e)
	}
}

type nopAllocator struct{ ipam.Allocator }

func (nopAllocator) Release(context.Context, ipam.Handle) error { return nil }
