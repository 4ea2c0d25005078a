package bench

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestClassifyProcess(t *testing.T) {
	const dir = "/tmp/twill-bench-scale-1/lab"
	argv := func(args ...string) []byte { return []byte(strings.Join(args, "\x00") + "\x00") }
	for _, tc := range []struct {
		cmdline         []byte
		component, node string
		ok              bool
	}{
		{argv("/cache/bin/kubelet", "--config="+dir+"/cluster/nodes/node3/kube/kubelet.yaml", "--v=2"), compKubelet, "node3", true},
		{argv("containerd", "--config", dir+"/cluster/nodes/node10/kube/containerd.toml"), compContainerd, "node10", true},
		{argv("/cache/bin/kube-proxy", "--config="+dir+"/cluster/nodes/node1/kube/proxy.yaml"), compKubeProxy, "node1", true},
		{argv("/bin/twill", "agent", "--node-name", "node7", "--kubeconfig", dir+"/cluster/admin.kubeconfig"), compAgent, "node7", true},
		{argv("/bin/twill", "agent", "--node-name=node2", "--state-dir", dir+"/x"), compAgent, "node2", true},
		{argv("/cache/bin/kube-apiserver", "--etcd-servers=https://10.254.1.1:2379", "--cert-dir="+dir+"/cluster/controlplane"), "kube_apiserver", "", true},
		{argv("/cache/bin/etcd", "--data-dir="+dir+"/cluster/controlplane/etcd"), "etcd", "", true},
		{argv("/bin/twill", "lab", "serve", "--name", "twb1234", "--nodes", "10"), compSupervisor, "", true},
		{argv("/bin/twill", "lab", "serve", "--name", "twb9999", "--nodes", "10"), "", "", false},
		// The nsenter between a node and its program, and another lab's kubelet, are not it.
		{argv("nsenter", "--net=/run/netns/x", "--", "/cache/bin/kubelet", "--config="+dir+"/cluster/nodes/node3/kube/k.yaml"), "", "", false},
		{argv("/cache/bin/kubelet", "--config=/tmp/other/cluster/nodes/node3/kube/k.yaml"), "", "", false},
	} {
		c, n, ok := classifyProcess(tc.cmdline, dir, "twb1234")
		if c != tc.component || n != tc.node || ok != tc.ok {
			t.Errorf("%q: got %q %q %v, want %q %q %v", tc.cmdline, c, n, ok, tc.component, tc.node, tc.ok)
		}
	}
}

func TestParseVmRSS(t *testing.T) {
	got, err := parseVmRSS([]byte("Name:\tkubelet\nVmPeak:\t  900 kB\nVmRSS:\t   51200 kB\nRssAnon:\t 1 kB\n"))
	if err != nil || got != 50<<20 {
		t.Errorf("parseVmRSS = %d, %v; want 50 MiB", got, err)
	}
	if _, err := parseVmRSS([]byte("Name:\tkthreadd\nState:\tS\n")); err == nil {
		t.Error("a status without VmRSS gave no error")
	}
	// This process has a VmRSS: the parser reads the real file.
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	if rss, err := parseVmRSS(status); err != nil || rss < 1<<20 {
		t.Errorf("own VmRSS = %d, %v", rss, err)
	}
}

func TestScaleMeasurements(t *testing.T) {
	r := scaleResult{
		nodes: 3, pods: 6, labUp: 90 * time.Second,
		ready:       []time.Duration{10 * time.Second, 12 * time.Second, 20 * time.Second, 21 * time.Second, 30 * time.Second, 40 * time.Second},
		podsPerNode: map[string]int{"node1": 2, "node2": 3, "node3": 1},
		idle:        rssSample{compKubelet: {40, 50, 60}, "etcd": {100}},
		loaded:      rssSample{compKubelet: {70, 90, 80}, compAgent: {30, 31, 32}, "etcd": {120}},
	}
	by := map[string]Measurement{}
	for _, m := range scaleMeasurements(r, 2) {
		by[m.Metric] = m
	}
	check := func(name string, value, baseline float64, unit string) {
		t.Helper()
		m, ok := by[name]
		if !ok {
			t.Errorf("no %s in %v", name, by)
			return
		}
		if m.Value != value || m.Baseline != baseline || m.Unit != unit {
			t.Errorf("%s = %v %s against %v, want %v %s against %v", name, m.Value, m.Unit, m.Baseline, value, unit, baseline)
		}
	}
	check("scale_lab_up", 90, 0, "s")
	check("scale_pods_ready_p50", 20, 0, "s")
	check("scale_pods_ready_all", 40, 0, "s")
	check("scale_rss_kubelet_median", 80, 50, "MiB")
	check("scale_rss_kubelet_max", 90, 60, "MiB")
	check("scale_rss_twill_agent_median", 31, 0, "MiB") // no idle sample: no baseline
	check("scale_rss_etcd", 120, 100, "MiB")
	if _, ok := by["scale_rss_containerd_median"]; ok {
		t.Error("a component with no process is reported")
	}
	if c := by["scale_pods_ready_all"].Conditions; !strings.Contains(c, "pods per node 1..3 over 3 nodes") || !strings.Contains(c, "--nodes 3") {
		t.Errorf("conditions do not say how the pods spread: %q", c)
	}
	// A wait that ran out: the count of Ready pods, the time to half of all pods, no "all".
	r.pods = 10
	by = map[string]Measurement{}
	for _, m := range scaleMeasurements(r, 2) {
		by[m.Metric] = m
	}
	check("scale_pods_ready_count", 6, 0, "pods")
	check("scale_pods_ready_p50", 30, 0, "s") // the 5th of 10 pods
	if _, ok := by["scale_pods_ready_all"]; ok {
		t.Error("a time to all pods Ready is reported although not all were")
	}
	if c := by["scale_rss_kubelet_max"].Conditions; !strings.Contains(c, "3 processes") || !strings.Contains(c, "idle") {
		t.Errorf("memory conditions: %q", c)
	}
}
