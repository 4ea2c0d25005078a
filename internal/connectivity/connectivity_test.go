package connectivity

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// fakeCluster is an API whose pods run at once on their node, with addresses: 10.244.<node>.<n>
// for pods, 10.254.1.<node> for the nodes (and hostNetwork pods). It has the API's Service and,
// with dns, a kube-dns Service.
func fakeCluster(t *testing.T, nodes int, dns bool) *fake.Clientset {
	t.Helper()
	objs := []runtime.Object{&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: "default"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.1"}}}
	if dns {
		objs = append(objs, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Namespace: "kube-system"},
			Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10"}})
	}
	for i := range nodes {
		objs = append(objs, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("node%d", i+1)},
			Status:     corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}},
		})
	}
	kube := fake.NewClientset(objs...)
	var (
		mu    sync.Mutex
		count int
		pods  []*corev1.Pod // as created, for the endpoints of Services
	)
	kube.PrependReactor("create", "pods", func(action k8stesting.Action) (bool, runtime.Object, error) {
		pod := action.(k8stesting.CreateAction).GetObject().(*corev1.Pod)
		mu.Lock()
		defer mu.Unlock()
		count++
		n := count
		var node int
		fmt.Sscanf(pod.Spec.NodeName, "node%d", &node)
		pod.Status.Phase = corev1.PodRunning
		pod.Status.HostIP = fmt.Sprintf("10.254.1.%d", node)
		pod.Status.PodIP = fmt.Sprintf("10.244.%d.%d", node, n)
		if pod.Spec.HostNetwork {
			pod.Status.PodIP = pod.Status.HostIP
		}
		pods = append(pods, pod)
		return false, pod, nil // the tracker stores the pod with its status
	})
	services := 0
	kube.PrependReactor("create", "services", func(action k8stesting.Action) (bool, runtime.Object, error) {
		svc := action.(k8stesting.CreateAction).GetObject().(*corev1.Service)
		mu.Lock()
		defer mu.Unlock()
		services++
		if svc.Spec.ClusterIP != corev1.ClusterIPNone {
			svc.Spec.ClusterIP = fmt.Sprintf("10.96.1.%d", services)
		}
		for i := range svc.Spec.Ports {
			if svc.Spec.Type == corev1.ServiceTypeNodePort || svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
				svc.Spec.Ports[i].NodePort = int32(30000 + 10*services + i)
			}
		}
		// The EndpointSlice controller's work: the pods the selector matches (the tracker has
		// its own lock; the clientset's is held while reactors run).
		slice := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: svc.Name + "-1", Namespace: svc.Namespace,
			Labels: map[string]string{discoveryv1.LabelServiceName: svc.Name}}, AddressType: discoveryv1.AddressTypeIPv4}
		for _, pod := range selected(pods, svc) {
			slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{pod.Status.PodIP}})
		}
		if err := kube.Tracker().Add(slice); err != nil {
			return true, nil, err
		}
		return false, svc, nil
	})
	return kube
}

// selected are the pods of list that svc's selector matches, in their order.
func selected(list []*corev1.Pod, svc *corev1.Service) []*corev1.Pod {
	var out []*corev1.Pod
	for _, pod := range list {
		if len(svc.Spec.Selector) > 0 && labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(pod.Labels)) {
			out = append(out, pod)
		}
	}
	return out
}

// prober answers probes as a network would: answer(from, addr) gives the address the server
// saw, or the prober's exit code; then a Service's address leads to one of the pods it
// selects, as a service proxy would choose (see proxyFault for the ways it can be broken).
type prober struct {
	answer func(from *corev1.Pod, proto, addr string) (clientIP string, code int)
	mu     sync.Mutex // probes run in parallel
	calls  []string
	// kube is the cluster whose pods and Services the probes reach.
	kube *fake.Clientset
	// dns, when set, answers lookups in place of the fake cluster DNS (addresses, exit code).
	dns func(name string) (string, int)
	// fault breaks the service proxy in one way.
	fault proxyFault
}

// proxyFault is a way a service proxy can be broken.
type proxyFault int

const (
	proxyHealthy proxyFault = iota
	// proxyIgnoresAffinity picks at random whatever the Service's sessionAffinity.
	proxyIgnoresAffinity
	// proxyAlwaysFirst always picks the first endpoint.
	proxyAlwaysFirst
	// proxyIgnoresLocal treats both traffic policies as Cluster (and masquerades node ports).
	proxyIgnoresLocal
	// proxyDropsWithoutEndpoints lets connections to a Service without endpoints time out.
	proxyDropsWithoutEndpoints
	// proxyNoHairpin drops a pod's connection to its own Service when it picks the pod.
	proxyNoHairpin
)

// serve says which pod answers a probe of host:port from a pod, or why none does (an exit
// code), and the client address the server sees (clientIP, unless the proxy masquerades).
func (p *prober) serve(ctx context.Context, from *corev1.Pod, host, port, clientIP string) (string, string, int) {
	pods, _ := p.kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	var all []*corev1.Pod
	for i := range pods.Items {
		pod := &pods.Items[i]
		if pod.Status.PodIP == host && !pod.Spec.HostNetwork {
			return pod.Name, clientIP, 0
		}
		all = append(all, pod)
	}
	slices.SortFunc(all, func(a, b *corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
	services, _ := p.kube.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	for _, svc := range services.Items {
		internal := svc.Spec.ClusterIP == host || svc.Name == host
		external := slices.Contains(svc.Spec.ExternalIPs, host) ||
			slices.ContainsFunc(svc.Status.LoadBalancer.Ingress, func(i corev1.LoadBalancerIngress) bool { return i.IP == host })
		for _, sp := range svc.Spec.Ports {
			external = external || sp.NodePort != 0 && fmt.Sprint(sp.NodePort) == port && strings.HasPrefix(host, "10.254.1.")
		}
		if !internal && !external {
			continue
		}
		candidates := selected(all, &svc)
		local := func(nodeIP string) {
			if p.fault != proxyIgnoresLocal {
				candidates = slices.DeleteFunc(candidates, func(pod *corev1.Pod) bool { return pod.Status.HostIP != nodeIP })
			}
		}
		switch {
		case internal && svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal:
			local(from.Status.HostIP)
		case external && svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal:
			local(host)
			if p.fault == proxyIgnoresLocal {
				clientIP = "10.254.1.99"
			}
		case external:
			clientIP = "10.254.1.99" // masqueraded
		}
		if len(candidates) == 0 {
			if p.fault == proxyDropsWithoutEndpoints {
				return "", "", exitTimeout
			}
			return "", "", exitRefused
		}
		pick := candidates[rand.IntN(len(candidates))]
		if p.fault == proxyAlwaysFirst || svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP && p.fault != proxyIgnoresAffinity {
			pick = candidates[0]
		}
		if pick.Name == from.Name && p.fault == proxyNoHairpin {
			return "", "", exitTimeout
		}
		return pick.Name, clientIP, 0
	}
	return "server", clientIP, 0
}

// resolve answers a lookup as the cluster DNS would: Services by their full or short name
// (headless ones with their pods' addresses).
func (p *prober) resolve(ctx context.Context, name string) (string, int) {
	services, _ := p.kube.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	for _, svc := range services.Items {
		if name == svc.Name || name == svc.Name+"."+svc.Namespace+".svc.cluster.local" {
			if svc.Spec.ClusterIP != corev1.ClusterIPNone {
				return svc.Spec.ClusterIP + "\n", 0
			}
			pods, _ := p.kube.CoreV1().Pods(svc.Namespace).List(ctx, metav1.ListOptions{})
			var out strings.Builder
			for i := range pods.Items {
				if len(selected([]*corev1.Pod{&pods.Items[i]}, &svc)) > 0 {
					out.WriteString(pods.Items[i].Status.PodIP + "\n")
				}
			}
			return out.String(), 0
		}
	}
	return "", exitNotFound
}

func (p *prober) exec(ctx context.Context, pod *corev1.Pod, argv []string) (string, string, int, error) {
	record := func(call string) {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.calls = append(p.calls, call)
	}
	if argv[2] == "resolve" {
		record(pod.Name + " resolve " + argv[3])
		if p.dns == nil {
			out, code := p.resolve(ctx, argv[3])
			return out, "", code, nil
		}
		out, code := p.dns(argv[3])
		return out, "", code, nil
	}
	addr, proto := argv[3], argv[5]
	record(pod.Name + " " + proto + " " + addr)
	host, port, _ := net.SplitHostPort(addr)
	if host == "127.0.0.1" {
		return "pod=" + pod.Name + " client=127.0.0.1:1\n", "", 0, nil
	}
	count := 1
	if i := slices.Index(argv, "--count"); i > 0 {
		count, _ = strconv.Atoi(argv[i+1])
	}
	// As `netcheck connect --count`: a reply line per connection, until one fails.
	var out strings.Builder
	for range count {
		clientIP, code := p.answer(pod, proto, addr)
		if code != 0 {
			return out.String(), "twill: failed", code, nil
		}
		server, clientIP, code := p.serve(ctx, pod, host, port, clientIP)
		if code != 0 {
			return out.String(), "twill: failed", code, nil
		}
		out.WriteString("pod=" + server + " client=" + clientIP + ":40000\n")
	}
	return out.String(), "", 0, nil
}

func runFake(t *testing.T, nodes int, answer func(*corev1.Pod, string, string) (string, int)) ([]Result, *prober) {
	t.Helper()
	return runFakeWith(t, fakeCluster(t, nodes, true), &prober{answer: answer})
}

func runFakeWith(t *testing.T, kube *fake.Clientset, p *prober) ([]Result, *prober) {
	t.Helper()
	return runFakeConfig(t, Config{Kube: kube, Timeout: time.Second}, p)
}

func runFakeConfig(t *testing.T, cfg Config, p *prober) ([]Result, *prober) {
	t.Helper()
	p.kube = cfg.Kube.(*fake.Clientset)
	r := newRun(cfg, nil)
	r.exec = p.exec
	r.serviceWait = 100 * time.Millisecond
	r.retryEvery = 10 * time.Millisecond
	results, err := r.execute(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return results, p
}

// healthy answers every probe with the client's own address, and refuses the closed port.
func healthy(from *corev1.Pod, proto, addr string) (string, int) {
	if strings.HasSuffix(addr, ":8090") {
		return "", exitRefused
	}
	return from.Status.PodIP, 0
}

func TestHealthyClusterPassesEveryScenario(t *testing.T) {
	results, p := runFake(t, 3, healthy)
	if n := Failed(results); n != 0 {
		t.Errorf("%d scenarios failed on a healthy network: %+v", n, results)
	}
	// Every node gets a server; the client reaches each of them on each protocol.
	for _, want := range []string{"client tcp 10.244.1.", "client udp 10.244.2.", "client http 10.244.3.", "host-0 tcp 10.244.3.",
		"client tcp 10.96.1.1:80", "client tcp 10.96.1.3:80", "client tcp 10.254.1.3:300", "host-0 udp 10.254.1.3:300",
		"client resolve kubernetes.default.svc.cluster.local", "client resolve server-2", "client tcp server-2:80"} {
		if !slices.ContainsFunc(p.calls, func(c string) bool { return strings.HasPrefix(c, want) }) {
			t.Errorf("no probe %q among %v", want, p.calls)
		}
	}
}

func TestEachKindOfBreakageFailsItsScenarios(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer func(*corev1.Pod, string, string) (string, int)
		failed []string
	}{
		{"cross-node traffic dropped", func(from *corev1.Pod, proto, addr string) (string, int) {
			if strings.HasPrefix(addr, "10.244.2.") || strings.HasPrefix(addr, "10.254.1.2:") {
				return "", exitTimeout
			}
			return healthy(from, proto, addr)
		}, []string{"pod to pod, to node2 (tcp)", "pod to pod, to node2 (udp)", "node to pod, to node2 (tcp)", "pod to node, to node2 (tcp)", "closed port refused, node2"}},
		{"source masqueraded", func(from *corev1.Pod, proto, addr string) (string, int) {
			ip, code := healthy(from, proto, addr)
			if code == 0 {
				ip = from.Status.HostIP
			}
			return ip, code
		}, []string{"pod to pod, same node (tcp)", "pod to pod, to node2 (http)"}},
		{"no Service implementation (no kube-proxy)", func(from *corev1.Pod, proto, addr string) (string, int) {
			if strings.HasPrefix(addr, "10.96.") || strings.Contains(addr, ":300") || strings.HasPrefix(addr, "server-") {
				return "", exitTimeout
			}
			return healthy(from, proto, addr)
		}, []string{"pod to ClusterIP Service, same node (tcp)", "pod to ClusterIP Service, to node2 (tcp)",
			"pod to NodePort of node2 (tcp)", "pod to NodePort of node2 (udp)", "node to NodePort of node2, from node1 (tcp)",
			scenarioDNSConnectTo}},
		{"Service traffic masqueraded", func(from *corev1.Pod, proto, addr string) (string, int) {
			ip, code := healthy(from, proto, addr)
			if strings.HasPrefix(addr, "10.96.") {
				ip = from.Status.HostIP
			}
			return ip, code
		}, []string{"pod to ClusterIP Service, same node (tcp)", "pod to ClusterIP Service, to node2 (tcp)"}},
		{"closed port dropped, not refused", func(from *corev1.Pod, proto, addr string) (string, int) {
			if strings.HasSuffix(addr, ":8090") {
				return "", exitTimeout
			}
			return healthy(from, proto, addr)
		}, []string{"closed port refused, node2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			results, _ := runFake(t, 2, tc.answer)
			for _, want := range tc.failed {
				i := slices.IndexFunc(results, func(r Result) bool { return r.Scenario == want })
				if i < 0 {
					t.Errorf("no scenario %q", want)
				} else if results[i].OK {
					t.Errorf("%q passed: %+v", want, results[i])
				}
			}
			if Failed(results) == 0 {
				t.Error("the run reports no failure")
			}
		})
	}
}

func TestSingleNodeSkipsAcrossNodes(t *testing.T) {
	results, _ := runFake(t, 1, healthy)
	if Failed(results) != 0 {
		t.Errorf("failures on one healthy node: %+v", results)
	}
	if !slices.ContainsFunc(results, func(r Result) bool { return r.Skipped && strings.Contains(r.Scenario, "across nodes") }) {
		t.Errorf("across-node scenarios not reported as skipped: %+v", results)
	}
}

func TestWithoutClusterDNSTheDNSScenariosAreSkipped(t *testing.T) {
	results, p := runFakeWith(t, fakeCluster(t, 2, false), &prober{answer: healthy})
	if Failed(results) != 0 {
		t.Errorf("failures on a healthy cluster without DNS: %+v", results)
	}
	for _, name := range []string{scenarioDNSAPI, scenarioDNSService, scenarioDNSConnectTo} {
		i := slices.IndexFunc(results, func(r Result) bool { return r.Scenario == name })
		if i < 0 || !results[i].Skipped || results[i].OK || !strings.Contains(results[i].Detail, "kube-dns") {
			t.Errorf("scenario %q without kube-dns: %+v, want skipped with the reason", name, results)
		}
	}
	if slices.ContainsFunc(p.calls, func(c string) bool { return strings.Contains(c, "resolve") }) {
		t.Errorf("lookups ran without a cluster DNS: %v", p.calls)
	}
}

func TestBrokenDNSFailsTheDNSScenarios(t *testing.T) {
	for _, tc := range []struct {
		name string
		dns  func(string) (string, int)
	}{
		{"times out", func(string) (string, int) { return "", exitTimeout }},
		{"knows no name", func(string) (string, int) { return "", exitNotFound }},
		{"answers a wrong address", func(string) (string, int) { return "10.96.9.9\n", 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			results, _ := runFakeWith(t, fakeCluster(t, 2, true), &prober{answer: healthy, dns: tc.dns})
			for _, name := range []string{scenarioDNSAPI, scenarioDNSService} {
				i := slices.IndexFunc(results, func(r Result) bool { return r.Scenario == name })
				if i < 0 || results[i].OK || results[i].Skipped {
					t.Errorf("scenario %q with a DNS that %s: %+v, want a failure", name, tc.name, results)
				}
			}
		})
	}
}
