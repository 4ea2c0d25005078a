package labctl_test

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/twill-net/twill/internal/connectivity"
	"github.com/twill-net/twill/internal/lab/kubenode"
	"github.com/twill-net/twill/internal/lab/labctl"
	"github.com/twill-net/twill/internal/lab/underlay"
	"github.com/twill-net/twill/internal/lab/upstream"
	"github.com/twill-net/twill/internal/testutil"
)

// The user's flow: `twill lab up` with two nodes (auto routing: the second node in another
// subnet) brings up a lab that outlives the command, a second `up` leaves it alone, the
// connectivity catalogue passes against it through the kubeconfig for the machine, and
// `down` leaves no namespace, process, mount, cgroup or file behind.
func TestLabUpConnectivityDown(t *testing.T) {
	testutil.RequireRoot(t)
	for _, prog := range []string{"containerd", "containerd-shim-runc-v2", "runc", "unshare", "nsenter"} {
		if _, err := exec.LookPath(prog); err != nil {
			t.Skipf("skipped: %s is not installed (hack/setup.sh)", prog)
		}
	}
	if _, err := os.Stat("/usr/lib/cni/portmap"); err != nil {
		t.Skip("skipped: Debian's CNI plugins are not installed (hack/setup.sh)")
	}
	ctx := t.Context()
	upstreamBin, err := upstream.Binaries(ctx, "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "coredns")
	if errors.Is(err, upstream.ErrNotBuilt) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin+"/", "github.com/twill-net/twill/cmd/twill", "github.com/twill-net/twill/cmd/twill-cni")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building twill: %v\n%s", err, out)
	}
	name := fmt.Sprintf("twt-lc%04x", rand.IntN(1<<16))
	dir, err := os.MkdirTemp("", name+"-")
	if err != nil {
		t.Fatal(err)
	}
	p := labctl.Paths{Dir: dir}
	t.Cleanup(func() {
		if err := labctl.Down(t.Context(), p, name, testWriter{t}); err != nil {
			t.Errorf("down in cleanup: %v", err)
		}
	})
	opts := labctl.UpOptions{
		Options: labctl.Options{Paths: p, Name: name, Nodes: 2, Routing: labctl.RoutingAuto,
			UpstreamBin: upstreamBin, TwillBin: filepath.Join(bin, "twill"), CNIBin: bin},
		Self: filepath.Join(bin, "twill"), Progress: testWriter{t}, Timeout: 8 * time.Minute,
	}
	start := time.Now()
	st, err := labctl.Up(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("lab up in %s", time.Since(start).Round(100*time.Millisecond))
	if _, err := labctl.Up(ctx, opts); !errors.Is(err, labctl.ErrAlreadyUp) {
		t.Errorf("second up: %v, want ErrAlreadyUp", err)
	}
	if len(st.Nodes) != 3 || st.Nodes[2].Subnet == st.Nodes[1].Subnet {
		t.Errorf("nodes %+v: want cp, node1 and node2, node2 in another subnet", st.Nodes)
	}
	if !strings.HasPrefix(st.DNS, "answering") {
		t.Errorf("cluster DNS after up: %q, want answering", st.DNS)
	}

	// `twill lab exec` runs in the node: its hostname is the node's.
	var out strings.Builder
	if err := labctl.Exec(ctx, p, "node2", []string{"hostname"}, nil, &out, &out); err != nil || strings.TrimSpace(out.String()) != "node2" {
		t.Errorf("exec hostname on node2: %q, %v", out.String(), err)
	}

	rest, err := clientcmd.BuildConfigFromFlags("", st.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	kube, err := kubernetes.NewForConfig(rest)
	if err != nil {
		t.Fatal(err)
	}
	results, err := connectivity.Run(ctx, connectivity.Config{Kube: kube, REST: rest, Image: labctl.WorkloadImage,
		LoadBalancerRange: kubenode.LoadBalancerRange}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		t.Logf("%-32s ok=%v %s %s", r.Scenario, r.OK, r.Took.Round(time.Millisecond), r.Detail)
	}
	if n := connectivity.Failed(results); n > 0 || len(results) < 10 {
		t.Errorf("%d of %d scenarios failed", n, len(results))
	}
	// The lab has a cluster DNS, two nodes and a load balancer range: no DNS, NodePort or
	// further Service scenario may be skipped.
	for _, want := range []string{"DNS: ", "NodePort", "LoadBalancer IP", "externalIPs", "session affinity", "sessionAffinity",
		"TrafficPolicy Local", "hairpin", "without endpoints", "headless"} {
		n := 0
		for _, r := range results {
			if strings.Contains(r.Scenario, want) {
				n++
				if r.Skipped {
					t.Errorf("%s skipped in the lab: %s", r.Scenario, r.Detail)
				}
			}
		}
		if n == 0 {
			t.Errorf("no %q scenario ran", want)
		}
	}

	// The test's API client still holds connections through the supervisor's proxy, as a
	// user's kubectl or informers would: down must not wait for them.
	start = time.Now()
	if err := labctl.Down(ctx, p, name, testWriter{t}); err != nil {
		t.Fatalf("down: %v", err)
	}
	took := time.Since(start)
	t.Logf("lab down in %s", took.Round(100*time.Millisecond))
	if took > time.Minute {
		t.Errorf("down took %s: the supervisor did not stop on SIGTERM", took)
	}
	checkNothingLeft(t, name, dir)

	// A half-made lab: the supervisor dies (SIGKILL, no cleanup of its own) once a node's
	// kubelet and containerd run. `up` says so, and `down` removes what is left.
	killer := &killOnLine{t: t, p: p, line: `msg="node runtime started"`}
	opts.Progress = killer
	if _, err := labctl.Up(ctx, opts); err == nil {
		t.Fatal("up succeeded although its supervisor was killed")
	} else {
		t.Logf("up after the supervisor was killed: %v", err)
	}
	if !killer.killed {
		t.Fatal("the supervisor was never killed")
	}
	if err := labctl.Down(ctx, p, name, testWriter{t}); err != nil {
		t.Fatalf("down after a half-made lab: %v", err)
	}
	checkNothingLeft(t, name, dir)
}

// killOnLine kills the supervisor with SIGKILL when its log shows line.
type killOnLine struct {
	t      *testing.T
	p      labctl.Paths
	line   string
	killed bool
}

func (k *killOnLine) Write(b []byte) (int, error) {
	k.t.Log(strings.TrimRight(string(b), "\n"))
	if !k.killed && strings.Contains(string(b), k.line) {
		if pid := k.p.Supervisor(); pid != 0 {
			k.killed = syscall.Kill(pid, syscall.SIGKILL) == nil
		}
	}
	return len(b), nil
}

// checkNothingLeft looks for what a lab could leave on the machine.
func checkNothingLeft(t *testing.T, name, dir string) {
	t.Helper()
	if netns, _ := filepath.Glob(filepath.Join(underlay.RunDir, name+"-*")); len(netns) > 0 {
		t.Errorf("network namespaces left: %v", netns)
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && (strings.Contains(string(cmdline), dir) || strings.Contains(string(cmdline), "/run/containerd/"+name)) {
			t.Errorf("process %s left: %s", e.Name(), strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if strings.Contains(s.Text(), name) || strings.Contains(s.Text(), dir) {
			t.Errorf("mount left: %s", s.Text())
		}
	}
	for _, pattern := range []string{"/sys/fs/cgroup/*/twill-" + name + "*", "/sys/fs/cgroup/*/*/twill-" + name + "*", "/sys/fs/cgroup/twill-" + name + "*"} {
		if left, _ := filepath.Glob(pattern); len(left) > 0 {
			t.Errorf("cgroups left: %v", left)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lab directory %s left (%v)", dir, err)
	}
}

// testWriter sends progress to the test's log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
