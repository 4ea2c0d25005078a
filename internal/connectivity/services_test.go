package connectivity

import (
	"context"
	"math"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/twill-net/twill/internal/netcheck"
)

// The lab's load balancer range.
var testRange = netip.MustParsePrefix("10.98.0.0/24")

func runFakeServices(t *testing.T, nodes int, fault proxyFault, lbRange netip.Prefix) ([]Result, *prober) {
	t.Helper()
	kube := fakeCluster(t, nodes, true)
	return runFakeConfig(t, Config{Kube: kube, Timeout: time.Second, LoadBalancerRange: lbRange},
		&prober{answer: healthy, fault: fault})
}

func resultOf(t *testing.T, results []Result, prefix string) Result {
	t.Helper()
	i := slices.IndexFunc(results, func(r Result) bool { return strings.HasPrefix(r.Scenario, prefix) })
	if i < 0 {
		t.Fatalf("no scenario %q among %+v", prefix, results)
	}
	return results[i]
}

var serviceScenarios = []string{"LoadBalancer IP: pod", "LoadBalancer IP: node", "externalIPs: pod", "externalIPs: node",
	scenarioAffinity, scenarioSpread, "externalTrafficPolicy Local: node to NodePort",
	"externalTrafficPolicy Local: NodePort of", "internalTrafficPolicy Local", scenarioHairpin, scenarioNoEndpoints,
	scenarioHeadlessDNS, scenarioHeadlessTo}

func TestServiceScenariosPassWithAHealthyProxy(t *testing.T) {
	results, p := runFakeServices(t, 2, proxyHealthy, testRange)
	for _, name := range serviceScenarios {
		if r := resultOf(t, results, name); !r.OK {
			t.Errorf("%s: %+v", name, r)
		}
	}
	// The load balancer address is the range's first after its network address, written into
	// the Service's status; the external IP is the next one.
	svc, err := p.kube.CoreV1().Services(DefaultNamespace).Get(t.Context(), "lb-server-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ing := svc.Status.LoadBalancer.Ingress; len(ing) != 1 || ing[0].IP != "10.98.0.1" {
		t.Errorf("load balancer status %+v, want 10.98.0.1", ing)
	}
	for _, want := range []string{"client tcp 10.98.0.1:80", "host-0 tcp 10.98.0.1:80", "client tcp 10.98.0.2:80",
		"host-0 tcp 10.98.0.2:80", "server-0 tcp 10.96.1.1:80", "client resolve headless", "client tcp headless:8080"} {
		if !slices.Contains(p.calls, want) {
			t.Errorf("no probe %q among %v", want, p.calls)
		}
	}
	// The affinity and control scenarios each make their spread of connections.
	if r := resultOf(t, results, scenarioSpread); !strings.Contains(r.Detail, "server-0") || !strings.Contains(r.Detail, "server-1") {
		t.Errorf("the control did not see both backends: %s", r.Detail)
	}
}

func TestEachServiceFaultFailsItsScenario(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fault  proxyFault
		failed []string
	}{
		{"affinity ignored", proxyIgnoresAffinity, []string{scenarioAffinity}},
		{"always the first endpoint", proxyAlwaysFirst, []string{scenarioSpread}},
		{"traffic policies ignored", proxyIgnoresLocal, []string{"externalTrafficPolicy Local: node to NodePort",
			"externalTrafficPolicy Local: NodePort of", "internalTrafficPolicy Local"}},
		{"no rejection without endpoints", proxyDropsWithoutEndpoints, []string{scenarioNoEndpoints}},
		{"no hairpin", proxyNoHairpin, []string{scenarioHairpin}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			results, _ := runFakeServices(t, 2, tc.fault, testRange)
			for _, name := range serviceScenarios {
				r := resultOf(t, results, name)
				if want := slices.Contains(tc.failed, name); r.OK == want || r.Skipped {
					t.Errorf("%s with %s: %+v, want failed %v", name, tc.name, r, want)
				}
			}
		})
	}
}

func TestWithoutARangeOrControllerTheLoadBalancerScenariosAreSkipped(t *testing.T) {
	results, p := runFakeServices(t, 2, proxyHealthy, netip.Prefix{})
	for _, name := range serviceScenarios[:4] {
		if r := resultOf(t, results, name); !r.Skipped || r.OK {
			t.Errorf("%s without a range: %+v, want skipped", name, r)
		}
	}
	if Failed(results) != 0 {
		t.Errorf("failures: %+v", results)
	}
	if slices.ContainsFunc(p.calls, func(c string) bool { return strings.Contains(c, "10.98.") }) {
		t.Errorf("probes to an address nobody assigned: %v", p.calls)
	}
}

func TestOnASingleNodeTheMultiBackendScenariosAreSkipped(t *testing.T) {
	results, _ := runFakeServices(t, 1, proxyHealthy, testRange)
	for _, name := range []string{scenarioAffinity, scenarioSpread, "externalTrafficPolicy Local", "internalTrafficPolicy Local"} {
		if r := resultOf(t, results, name); !r.Skipped {
			t.Errorf("%s on one node: %+v, want skipped", name, r)
		}
	}
	if Failed(results) != 0 {
		t.Errorf("failures on one healthy node: %+v", results)
	}
}

func TestSpreadProbesMakeAChanceFailureRare(t *testing.T) {
	// The control fails by chance when all its connections pick the same of two backends.
	if p := 2 * math.Pow(0.5, spreadProbes); p >= 1e-6 {
		t.Errorf("with %d probes the control fails by chance with probability %g", spreadProbes, p)
	}
}

func TestRangeAddr(t *testing.T) {
	for _, tc := range []struct {
		prefix string
		index  int
		want   string
	}{
		{"10.98.0.0/24", 1, "10.98.0.1"},
		{"10.98.0.7/24", 2, "10.98.0.2"}, // counted from the network address
		{"10.98.0.4/31", 1, "10.98.0.5"},
		{"10.98.0.4/31", 2, ""},
		{"fd00:98::/120", 2, "fd00:98::2"},
	} {
		got, ok := rangeAddr(netip.MustParsePrefix(tc.prefix), tc.index)
		if (tc.want == "") == ok || ok && got.String() != tc.want {
			t.Errorf("rangeAddr(%s, %d) = %s, %v; want %q", tc.prefix, tc.index, got, ok, tc.want)
		}
	}
	if _, ok := rangeAddr(netip.Prefix{}, 1); ok {
		t.Error("an address from no range")
	}
}

func answered(pod, client string) probeResult {
	return probeResult{reply: netcheck.Reply{Pod: pod, Client: client + ":40000"}}
}

func TestOnlyFromAndSpreadOver(t *testing.T) {
	a, b := answered("server-0", "10.0.0.1"), answered("server-1", "10.0.0.1")
	masq, lost := answered("server-0", "10.0.0.9"), probeResult{code: exitTimeout}
	for _, tc := range []struct {
		name            string
		results         []probeResult
		only, spreadsOK bool
	}{
		{"all on one", []probeResult{a, a, a}, true, false},
		{"on two", []probeResult{a, b, a}, false, true},
		{"one lost", []probeResult{a, lost, a}, false, false},
		{"one masqueraded", []probeResult{a, masq}, false, false},
		{"spread but one lost", []probeResult{a, b, lost}, false, false},
	} {
		if ok, detail := onlyFrom(tc.results, "server-0", "10.0.0.1"); ok != tc.only {
			t.Errorf("%s: onlyFrom = %v (%s), want %v", tc.name, ok, detail, tc.only)
		}
		if ok, detail := spreadOver(tc.results); ok != tc.spreadsOK {
			t.Errorf("%s: spreadOver = %v (%s), want %v", tc.name, ok, detail, tc.spreadsOK)
		}
	}
	if ok, _ := onlyFrom([]probeResult{masq}, "server-0", ""); !ok {
		t.Error("onlyFrom checks the client address when none is wanted")
	}
}

func TestProbeManyIsOneExecAndKeepsTheFailure(t *testing.T) {
	r := newRun(Config{Timeout: time.Second}, nil)
	var runs [][]string
	r.exec = func(_ context.Context, _ *corev1.Pod, argv []string) (string, string, int, error) {
		runs = append(runs, argv)
		return "pod=server-0 client=10.0.0.1:1\npod=server-1 client=10.0.0.1:2\n", "twill: refused", exitRefused, nil
	}
	results := r.probeMany(t.Context(), &corev1.Pod{}, netcheck.TCP, "10.96.0.5:80", 5)
	if len(runs) != 1 || !slices.Contains(runs[0], "--count") || runs[0][len(runs[0])-1] != "5" {
		t.Errorf("execs %v, want one with --count 5", runs)
	}
	s := tally(results)
	if len(results) != 3 || s.byPod["server-0"] != 1 || s.byPod["server-1"] != 1 || len(s.failed) != 1 || s.failed[0].code != exitRefused {
		t.Errorf("results %+v, want two answers then the refusal", results)
	}
	// A run that stops short without an error code is a failure too.
	r.exec = func(context.Context, *corev1.Pod, []string) (string, string, int, error) {
		return "pod=server-0 client=10.0.0.1:1\n", "", 0, nil
	}
	if ok, detail := spreadOver(r.probeMany(t.Context(), &corev1.Pod{}, netcheck.TCP, "10.96.0.5:80", 2)); ok {
		t.Errorf("a short series passed: %s", detail)
	}
}
