package kubenode_test

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/twill-net/twill/internal/agent"
	"github.com/twill-net/twill/internal/lab/cluster"
	"github.com/twill-net/twill/internal/lab/kubenode"
	"github.com/twill-net/twill/internal/lab/underlay"
	"github.com/twill-net/twill/internal/lab/upstream"
	"github.com/twill-net/twill/internal/testutil"
)

var keep = flag.Bool("keep", false, "keep the lab's directory (logs) after the test")

// twillPool is the agent's default IPv4 pool.
var twillPool = netip.MustParsePrefix("10.244.0.0/16")

// A Pod created through the API is scheduled by the real scheduler onto a lab node, whose real
// kubelet has containerd run it with the locally built pause image; containerd calls twill-cni,
// which gets the pod its address from the node's twill agent. Then everything goes away.
func TestPodGetsTwillNetworkThroughKubeletAndContainerd(t *testing.T) {
	testutil.RequireRoot(t)
	for _, prog := range []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "unshare", "nsenter"} {
		if _, err := exec.LookPath(prog); err != nil {
			t.Skipf("skipped: %s is not installed (apt-get install containerd runc; hack/setup.sh)", prog)
		}
	}
	if _, err := os.Stat("/usr/lib/cni/portmap"); err != nil {
		t.Skip("skipped: Debian's CNI plugins are not installed (apt-get install containernetworking-plugins)")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	upstreamBin, err := upstream.Binaries(ctx, "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy")
	if errors.Is(err, upstream.ErrNotBuilt) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "twill-kubenode-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() || *keep {
			t.Logf("logs kept in %s", dir)
			return
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Error(err)
		}
	})
	bin := filepath.Join(dir, "bin")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin+"/", "github.com/twill-net/twill/cmd/twill", "github.com/twill-net/twill/cmd/twill-cni")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building twill: %v\n%s", err, out)
	}
	pause, err := kubenode.BuildPauseImage(ctx, filepath.Join(dir, "images"))
	if err != nil {
		t.Fatal(err)
	}

	conntrackMax, _ := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_max")
	name := fmt.Sprintf("twt-kn%04x", rand.IntN(1<<16))
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	var nodes []*kubenode.Node
	var firstNodeStart time.Time
	lab, err := cluster.Start(ctx, cluster.Options{
		Name: name, Dir: dir, UpstreamBin: upstreamBin,
		TwillBin: filepath.Join(bin, "twill"), CNIBin: bin,
		Nodes:       []cluster.NodeSpec{{Name: "n1", Subnet: 0}, {Name: "n2", Subnet: 1}},
		Controllers: true,
		Log:         log,
		NodeRuntime: func(ctx context.Context, c *cluster.Cluster, n *cluster.Node) (cluster.NodeRuntime, error) {
			if firstNodeStart.IsZero() {
				firstNodeStart = time.Now()
			}
			kn, err := kubenode.Start(ctx, kubenode.Config{
				Node: n.Node, ControlPlane: c.CP, Dir: filepath.Join(n.Dir, "kube"), BinDir: upstreamBin,
				SharedDirs: []string{dir},
				CNIPlugins: map[string]string{
					"twill-cni": filepath.Join(bin, "twill-cni"),
					"portmap":   "/usr/lib/cni/portmap",
					"loopback":  "/usr/lib/cni/loopback",
				},
				Images:    []kubenode.Image{pause},
				KubeProxy: true,
				Log:       log,
			})
			if err != nil {
				return nil, err
			}
			nodes = append(nodes, kn)
			return kn, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	closeLab := func() {
		if !closed {
			closed = true
			if err := lab.Close(); err != nil {
				t.Errorf("closing the lab: %v", err)
			}
		}
	}
	t.Cleanup(closeLab)
	kube := lab.Clients.Kube

	for _, n := range lab.Nodes() {
		waitNodeReady(ctx, t, kube, n.Name)
	}
	t.Logf("nodes Ready %s after the first node's runtime started", time.Since(firstNodeStart).Round(100*time.Millisecond))
	for _, kn := range nodes {
		if _, err := os.Stat(filepath.Join(kn.Dir, "cni/net.d", agent.CNIConfFile)); err != nil {
			t.Errorf("node %s: twill's CNI config is not where containerd looks: %v", kn.Name, err)
		}
	}

	// kube-proxy programs Services in each node's own network namespace, and leaves the
	// machine's conntrack settings as they were.
	for _, n := range lab.Nodes() {
		waitKubeProxyTable(ctx, t, n)
	}
	if got, _ := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_max"); string(got) != string(conntrackMax) {
		t.Errorf("nf_conntrack_max changed from %q to %q", conntrackMax, got)
	}
	if out, err := exec.CommandContext(ctx, "nft", "list", "table", "ip", "kube-proxy").CombinedOutput(); err == nil {
		t.Errorf("kube-proxy's table is in the machine's network namespace:\n%s", out)
	}

	podStart := time.Now()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "sleeper", Namespace: cluster.PodNamespace},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name: "pause", Image: kubenode.PauseImage, ImagePullPolicy: corev1.PullNever,
			}},
			TerminationGracePeriodSeconds: new(int64),
		},
	}
	if _, err := kube.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	running := waitPodRunning(ctx, t, kube, pod.Namespace, pod.Name)
	t.Logf("pod Running on %s with %s, %s after it was created", running.Spec.NodeName, running.Status.PodIP,
		time.Since(podStart).Round(100*time.Millisecond))
	ip, err := netip.ParseAddr(running.Status.PodIP)
	if err != nil || !twillPool.Contains(ip) {
		t.Errorf("pod IP %q is not from twill's pool %s", running.Status.PodIP, twillPool)
	}
	// The address works: the pod's node reaches it through the link twill made.
	node := lab.Node(running.Spec.NodeName)
	if node == nil {
		t.Fatalf("pod scheduled to %q, which is not a lab node", running.Spec.NodeName)
	}
	if out, err := node.Command(ctx, "ping", "-c", "1", "-W", "2", ip.String()).CombinedOutput(); err != nil {
		t.Errorf("ping %s from its node %s: %v\n%s", ip, node.Name, err, out)
	}

	// The apiserver reaches the kubelet's server (what kubectl logs, exec and port-forward use),
	// which authenticates it by the lab CA and authorizes it through the API.
	if _, err := kube.CoreV1().Pods(pod.Namespace).GetLogs(pod.Name, &corev1.PodLogOptions{}).DoRaw(ctx); err != nil {
		t.Errorf("reading the pod's logs through its kubelet: %v", err)
	}

	// The kubelet tears the pod down (CNI DEL through containerd) when the Pod is deleted.
	if err := kube.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPodGone(ctx, t, kube, pod.Namespace, pod.Name)

	// A program that dies without Close takes its node programs with it, but not containerd's
	// shims and the pods: CleanupStale finds and removes those, and the rest of the node.
	pod.Name = "orphan"
	if _, err := kube.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPodRunning(ctx, t, kube, pod.Namespace, pod.Name)
	killNodePrograms(t, filepath.Join(dir, "nodes"))
	if err := kubenode.CleanupStale(name); err != nil {
		t.Errorf("CleanupStale: %v", err)
	}
	checkNodesGone(t, dir, name, nodes)

	// Close after that has nothing left to do on the nodes, and does not fail.
	closeLab()
	checkNodesGone(t, dir, name, nodes)
	netns, _ := filepath.Glob(filepath.Join(underlay.RunDir, name+"*"))
	for _, ns := range netns {
		t.Errorf("network namespace left: %s", ns)
	}
}

// killNodePrograms kills what the lab started on its nodes (under dir), as the death of the
// lab's program would (their parent-death signal).
func killNodePrograms(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(cmdline), dir+"/") {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// checkNodesGone looks for what the lab's nodes could leave on the machine: processes (shims
// and pods re-parent to init), mounts, cgroups.
func checkNodesGone(t *testing.T, dir, name string, nodes []*kubenode.Node) {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if strings.Contains(string(cmdline), dir+"/nodes/") || strings.Contains(string(cmdline), "/run/containerd/"+name) ||
			string(cmdline) == "/pause\x00" && inLabCgroup(e.Name(), name) {
			t.Errorf("process %s still runs: %s", e.Name(), strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fields := strings.Fields(s.Text()); len(fields) > 4 && strings.HasPrefix(fields[4], dir) {
			t.Errorf("mount left: %s", s.Text())
		}
	}
	cgroups, _ := filepath.Glob("/sys/fs/cgroup/*/*/twill-" + name + "-*")
	more, _ := filepath.Glob("/sys/fs/cgroup/*/*/*/twill-" + name + "-*")
	more2, _ := filepath.Glob("/sys/fs/cgroup/*/twill-" + name + "-*")
	for _, c := range append(append(cgroups, more...), more2...) {
		t.Errorf("cgroup left: %s", c)
	}
	for _, kn := range nodes {
		files, _ := filepath.Glob(filepath.Join(kn.Dir, "ns", "*"))
		for _, f := range files {
			t.Errorf("node %s: namespace file left: %s", kn.Name, f)
		}
	}
}

func inLabCgroup(pid, name string) bool {
	data, err := os.ReadFile(filepath.Join("/proc", pid, "cgroup"))
	return err == nil && strings.Contains(string(data), "/twill-"+name)
}

func waitNodeReady(ctx context.Context, t *testing.T, kube kubernetes.Interface, name string) {
	t.Helper()
	var last string
	for {
		node, err := kube.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			for _, c := range node.Status.Conditions {
				if c.Type == corev1.NodeReady {
					if c.Status == corev1.ConditionTrue {
						return
					}
					last = c.Reason + ": " + c.Message
				}
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("node %s not Ready: %s", name, last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func waitPodRunning(ctx context.Context, t *testing.T, kube kubernetes.Interface, ns, name string) *corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var last string
	for {
		pod, err := kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil && pod.Status.Phase == corev1.PodRunning {
			return pod
		}
		if err == nil {
			last = fmt.Sprintf("phase %s, node %q, conditions %v, containers %v", pod.Status.Phase, pod.Spec.NodeName,
				pod.Status.Conditions, pod.Status.ContainerStatuses)
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			events, _ := kube.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{})
			var msgs []string
			if events != nil {
				for _, e := range events.Items {
					msgs = append(msgs, e.Reason+": "+e.Message)
				}
			}
			t.Fatalf("pod %s not Running: %s\nevents:\n%s", name, last, strings.Join(msgs, "\n"))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func waitPodGone(ctx context.Context, t *testing.T, kube kubernetes.Interface, ns, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		_, err := kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("pod %s still there a minute after its deletion (last: %v)", name, err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// testWriter sends the lab's log to the test's.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// waitKubeProxyTable waits until kube-proxy has made its nftables table in node's namespace.
func waitKubeProxyTable(ctx context.Context, t *testing.T, node *cluster.Node) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		out, err := node.Command(ctx, "nft", "list", "table", "ip", "kube-proxy").CombinedOutput()
		if err == nil && strings.Contains(string(out), "services") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s: no kube-proxy nftables table after a minute: %v\n%s", node.Name, err, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
