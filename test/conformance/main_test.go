package conformance

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/twill-net/twill/internal/lab/labctl"
	"github.com/twill-net/twill/internal/lab/upstream"
)

// The lab every test of this package shares: three kubelet nodes (the last in a second
// underlay subnet, so pairs cross both native routing and VXLAN), twill enforcing policy as it
// does by default.
var (
	cluster    *Cluster
	kubeconfig string
	setupErr   error
	skipWhy    string
	keepFiles  = flag.Bool("keep", false, "keep the lab's directory (logs) after the run")
)

func TestMain(m *testing.M) {
	flag.Parse()
	// client-go logs every exec stream a probe's deadline cuts short; the results say enough.
	klog.LogToStderr(false)
	klog.SetOutput(io.Discard)
	if testing.Short() {
		skipWhy = "skipped in -short mode: the conformance suite brings a lab up"
		os.Exit(m.Run())
	}
	if os.Geteuid() != 0 {
		skipWhy = "skipped: the conformance suite needs root to bring a lab up (run it as root, as CI does)"
		os.Exit(m.Run())
	}
	for _, prog := range []string{"containerd", "containerd-shim-runc-v2", "runc", "unshare", "nsenter"} {
		if _, err := exec.LookPath(prog); err != nil {
			skipWhy = fmt.Sprintf("skipped: %s is not installed (hack/setup.sh)", prog)
			os.Exit(m.Run())
		}
	}
	name := fmt.Sprintf("twt-cf%04x", rand.IntN(1<<16))
	dir, err := os.MkdirTemp("", name+"-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	setupErr = bringUp(ctx, name, dir, served)
	code := m.Run()
	stop()
	select {
	case err := <-served:
		// A lab that failed to come up already said why (setupErr).
		if err != nil && setupErr == nil && !errors.Is(err, context.Canceled) {
			fmt.Fprintln(os.Stderr, "stopping the lab:", err)
			code = 1
		}
	case <-time.After(3 * time.Minute):
		fmt.Fprintln(os.Stderr, "the lab did not stop within 3 minutes")
		code = 1
	}
	if code != 0 || *keepFiles {
		fmt.Fprintln(os.Stderr, "conformance: lab directory kept:", dir)
	} else {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// bringUp runs the lab's supervisor in this process (labctl.Serve) and waits for it to be
// ready; served receives Serve's result once the lab has stopped.
func bringUp(ctx context.Context, name, dir string, served chan<- error) error {
	upstreamBin, err := upstream.Binaries(ctx, "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy")
	if errors.Is(err, upstream.ErrNotBuilt) {
		skipWhy = err.Error()
		served <- nil
		return nil
	}
	if err != nil {
		served <- nil
		return err
	}
	bin := filepath.Join(dir, "bin")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin+"/", "github.com/twill-net/twill/cmd/twill", "github.com/twill-net/twill/cmd/twill-cni")
	if out, err := build.CombinedOutput(); err != nil {
		served <- nil
		return fmt.Errorf("building twill: %w\n%s", err, out)
	}
	logFile, err := os.Create(filepath.Join(dir, "lab.log"))
	if err != nil {
		served <- nil
		return err
	}
	p := labctl.Paths{Dir: filepath.Join(dir, "lab")}
	opts := labctl.Options{Paths: p, Name: name, Nodes: 3, Routing: labctl.RoutingAuto,
		UpstreamBin: upstreamBin, TwillBin: filepath.Join(bin, "twill"), CNIBin: bin,
		Log: slog.New(slog.NewTextHandler(logFile, nil))}
	go func() {
		err := labctl.Serve(ctx, opts)
		logFile.Close()
		served <- err
	}()
	deadline := time.Now().Add(15 * time.Minute)
	var st labctl.State
	for {
		st, err = p.ReadState()
		if err == nil && st.Phase == labctl.PhaseReady {
			break
		}
		if err == nil && st.Phase == labctl.PhaseFailed {
			return fmt.Errorf("the lab failed to come up: %s (log %s)", st.Error, logFile.Name())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the lab is not ready after 15 minutes (log %s)", logFile.Name())
		}
		time.Sleep(time.Second)
	}
	kubeconfig = st.Kubeconfig
	rest, err := clientcmd.BuildConfigFromFlags("", st.Kubeconfig)
	if err != nil {
		return err
	}
	// The probes run as many execs at once; the client's default rate limit would queue them.
	rest.QPS, rest.Burst = 200, 400
	kube, err := kubernetes.NewForConfig(rest)
	if err != nil {
		return err
	}
	nodes, err := kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	var names []string
	for _, n := range nodes.Items {
		if !n.Spec.Unschedulable && isReady(n) {
			names = append(names, n.Name)
		}
	}
	sort.Strings(names)
	if len(names) < 3 {
		return fmt.Errorf("want 3 Ready nodes, have %v", names)
	}
	// Parallel 12: a step's execs (one per source pod, 9 in the shape, a few more when a
	// case adds pods) all run at once rather than leaving one for a second round.
	cluster = &Cluster{Kube: kube, REST: rest, Image: labctl.WorkloadImage, Nodes: names,
		ProbeTimeout: time.Second, Parallel: 12, Log: slog.Default()}
	return nil
}

func isReady(n corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// needLab skips or fails the test when the lab is not there.
func needLab(t *testing.T) *Cluster {
	t.Helper()
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
	if setupErr != nil {
		t.Fatalf("setting up the lab: %v", setupErr)
	}
	return cluster
}
