package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/twill-net/twill/internal/datapath"
)

// The machine running the tests may be loaded: waits are generous.
const serviceWait = 20 * time.Second

var webKey = datapath.ServiceKey{Namespace: "ns", Name: "web"}

// startServiceProxy runs a service proxy for node n1 against client, applying to dp, until the
// returned stop is called (or the test ends). tune adjusts the proxy before it runs.
func startServiceProxy(t *testing.T, client kubernetes.Interface, dp datapath.ServiceReconciler, tune func(*serviceProxy)) (stop func()) {
	t.Helper()
	factory := informers.NewSharedInformerFactory(client, 0)
	s, err := newServiceProxy(factory, "n1", dp, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	s.retryMin, s.retryMax = 20*time.Millisecond, 100*time.Millisecond
	if tune != nil {
		tune(s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	factory.Start(ctx.Done())
	go func() { done <- s.run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("service loop ended with %v, want context.Canceled", err)
		}
		factory.Shutdown()
	}
	t.Cleanup(stop)
	return stop
}

func webService() *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("web")}},
		},
	}
}

// webSlice is web's EndpointSlice with one endpoint on n1 and one on n2.
func webSlice(readyOnN1 bool) *discoveryv1.EndpointSlice {
	name, proto, port := "http", corev1.ProtocolTCP, int32(8080)
	n1, n2 := "n1", "n2"
	yes := true
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "web-abc", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &proto, Port: &port}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.244.1.3"}, NodeName: &n1, Conditions: discoveryv1.EndpointConditions{Ready: &readyOnN1}},
			{Addresses: []string{"10.244.2.4"}, NodeName: &n2, Conditions: discoveryv1.EndpointConditions{Ready: &yes}},
		},
	}
}

func backendsOf(s datapath.Service) string {
	if len(s.Ports) != 1 {
		return fmt.Sprintf("%d ports", len(s.Ports))
	}
	var out []string
	for _, b := range s.Ports[0].Backends {
		out = append(out, fmt.Sprintf("%s:%d@%s", b.Addr, b.Port, b.Node))
	}
	return strings.Join(out, " ")
}

// waitServed waits until the fake serves what ok accepts, and fails with what it serves.
func waitServed(t *testing.T, dp *datapath.FakeServices, what string, ok func(map[datapath.ServiceKey]datapath.Service) bool) {
	t.Helper()
	deadline := time.Now().Add(serviceWait)
	for {
		served := dp.Served()
		if ok(served) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s the datapath does not serve %s; it serves %+v (changes %d)", serviceWait, what, served, len(dp.Changes()))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func servesWebWith(backends string) func(map[datapath.ServiceKey]datapath.Service) bool {
	return func(m map[datapath.ServiceKey]datapath.Service) bool {
		s, ok := m[webKey]
		return ok && backendsOf(s) == backends
	}
}

func TestServiceProxyServesAndFollowsTheAPI(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	dp := &datapath.FakeServices{}
	startServiceProxy(t, client, dp, nil)

	// The first apply is Full, even with no service at all: it clears what an earlier run left.
	waitServed(t, dp, "an empty state", func(map[datapath.ServiceKey]datapath.Service) bool { return len(dp.Changes()) > 0 })
	if ch := dp.Changes()[0]; !ch.Full || len(ch.Set) != 0 {
		t.Fatalf("first apply = %+v, want Full and empty", ch)
	}

	if _, err := client.CoreV1().Services("ns").Create(ctx, webService(), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Create(ctx, webSlice(true), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitServed(t, dp, "web with both endpoints", servesWebWith("10.244.1.3:8080@n1 10.244.2.4:8080@n2"))
	web := dp.Served()[webKey]
	if !slices.Equal(web.ClusterIPs, []netip.Addr{netip.MustParseAddr("10.96.0.10")}) || web.Ports[0].Port != 80 {
		t.Errorf("web is served as %+v, want 10.96.0.10:80", web)
	}
	if lb := web.Ports[0].LocalBackends; len(lb) != 1 || lb[0].Addr != netip.MustParseAddr("10.244.1.3") {
		t.Errorf("local backends = %v, want n1's 10.244.1.3", lb)
	}

	// n1's endpoint stops being ready: it leaves the backends.
	if _, err := client.DiscoveryV1().EndpointSlices("ns").Update(ctx, webSlice(false), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitServed(t, dp, "web without n1's endpoint", servesWebWith("10.244.2.4:8080@n2"))

	// The service goes: the datapath is told to remove it, not handed a new Full state.
	before := len(dp.Changes())
	if err := client.CoreV1().Services("ns").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitServed(t, dp, "nothing", func(m map[datapath.ServiceKey]datapath.Service) bool { return len(m) == 0 })
	for _, ch := range dp.Changes()[before:] {
		if ch.Full {
			t.Errorf("a Full apply after a single delete: %+v", ch)
		}
	}
	if last := dp.Changes()[len(dp.Changes())-1]; !slices.Equal(last.Removed, []datapath.ServiceKey{webKey}) {
		t.Errorf("last change = %+v, want Removed [ns/web]", last)
	}
}

func TestServiceProxyRestartAppliesOneFull(t *testing.T) {
	client := fake.NewClientset(webService(), webSlice(true))
	dp := &datapath.FakeServices{}
	stop := startServiceProxy(t, client, dp, nil)
	waitServed(t, dp, "web", servesWebWith("10.244.1.3:8080@n1 10.244.2.4:8080@n2"))
	stop()

	before := len(dp.Changes())
	startServiceProxy(t, client, dp, nil)
	waitServed(t, dp, "a change after the restart", func(map[datapath.ServiceKey]datapath.Service) bool { return len(dp.Changes()) > before })
	time.Sleep(200 * time.Millisecond) // room for a second, unwanted apply
	after := dp.Changes()[before:]
	if len(after) != 1 || !after[0].Full || len(after[0].Set) != 1 || after[0].Set[0].Key != webKey {
		t.Fatalf("changes after the restart = %+v, want one Full with web", after)
	}
	if got := backendsOf(dp.Served()[webKey]); got != "10.244.1.3:8080@n1 10.244.2.4:8080@n2" {
		t.Errorf("after the restart web's backends are %q", got)
	}
}

func TestServiceProxyRetriesAFailedApplyInFull(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	dp := &datapath.FakeServices{}
	startServiceProxy(t, client, dp, nil)
	waitServed(t, dp, "the first apply", func(map[datapath.ServiceKey]datapath.Service) bool { return len(dp.Changes()) > 0 })

	dp.SetErr(errors.New("nft: no such table"))
	if _, err := client.CoreV1().Services("ns").Create(ctx, webService(), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Let it fail twice (the second a Full retry after the backoff), then succeed.
	waitServed(t, dp, "two failed applies", func(map[datapath.ServiceKey]datapath.Service) bool { return len(dp.Changes()) >= 3 })
	if ch := dp.Changes()[2]; !ch.Full {
		t.Errorf("the retry after a failed apply = %+v, want Full", ch)
	}
	dp.SetErr(nil)
	waitServed(t, dp, "web after the datapath recovered", servesWebWith(""))
	last := dp.Changes()[len(dp.Changes())-1]
	if !last.Full || len(last.Set) != 1 {
		t.Errorf("the apply that succeeded = %+v, want Full with web", last)
	}
}

// TestServiceProxyBatchesABurst: events within the batch window become one apply.
func TestServiceProxyBatchesABurst(t *testing.T) {
	client := fake.NewClientset()
	dp := &datapath.FakeServices{}
	p := make(chan *serviceProxy, 1)
	startServiceProxy(t, client, dp, func(s *serviceProxy) { s.batch = time.Second; p <- s })
	s := <-p
	waitServed(t, dp, "the first apply", func(map[datapath.ServiceKey]datapath.Service) bool { return len(dp.Changes()) > 0 })

	// Feed the calculator as the informer would, 50 services in a burst.
	for i := range 50 {
		svc := webService()
		svc.Name = fmt.Sprintf("web-%d", i)
		svc.Spec.ClusterIP = fmt.Sprintf("10.96.1.%d", i)
		svc.Spec.ClusterIPs = []string{svc.Spec.ClusterIP}
		s.calc.UpsertService(svc)
		s.kick()
	}
	waitServed(t, dp, "50 services", func(m map[datapath.ServiceKey]datapath.Service) bool { return len(m) == 50 })
	if n := len(dp.Changes()); n != 2 {
		t.Errorf("%d applies, want 2 (the first Full, then one for the burst)", n)
	}
}

func TestServicesNeedADatapath(t *testing.T) {
	factory := informers.NewSharedInformerFactory(fake.NewClientset(), 0)
	if _, err := newServiceProxy(factory, "n1", nil, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "no service datapath") {
		t.Errorf("service proxy without a datapath: %v, want an error saying there is no service datapath", err)
	}
}
