package controlplane

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/twill-net/twill/internal/lab/underlay"
	"github.com/twill-net/twill/internal/lab/upstream"
	"github.com/twill-net/twill/internal/testutil"
)

// lab is an underlay with a control-plane node and a worker node.
type lab struct {
	net            *underlay.Network
	server, worker *underlay.Node
	binDir         string
}

func newLab(t *testing.T, name string) *lab {
	t.Helper()
	testutil.RequireRoot(t)
	binDir, err := upstream.Binaries(t.Context(), "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
	if errors.Is(err, upstream.ErrNotBuilt) {
		t.Skipf("skipped: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	n, err := underlay.New(fmt.Sprintf("twt-%s%d", name, os.Getpid()), netip.MustParsePrefix("10.251.0.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("closing the underlay: %v", err)
		}
		if left, _ := filepath.Glob(filepath.Join(underlay.RunDir, n.Name+"-*")); len(left) > 0 {
			t.Errorf("namespaces left: %v", left)
		}
	})
	l := &lab{net: n, binDir: binDir}
	if l.server, err = n.AddNode("cp", 0); err != nil {
		t.Fatal(err)
	}
	if l.worker, err = n.AddNode("w1", 0); err != nil {
		t.Fatal(err)
	}
	return l
}

func TestControlPlaneServesTheAPI(t *testing.T) {
	l := newLab(t, "cp")
	began := time.Now()
	cp, err := Start(t.Context(), Config{Dir: t.TempDir(), BinDir: l.binDir, Node: l.server, Controllers: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("control plane ready in %s", time.Since(began).Round(time.Millisecond))
	t.Cleanup(func() { _ = cp.Stop() })
	if want := "https://" + l.server.IP.String() + ":6443"; cp.Server() != want {
		t.Errorf("Server() = %s, want %s", cp.Server(), want)
	}

	// From this process, in the root network namespace.
	client := kubernetes.NewForConfigOrDie(cp.RESTConfig())
	version, err := client.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if version.GitVersion != "v1.37.2" {
		t.Errorf("apiserver version %s, want v1.37.2", version.GitVersion)
	}
	ctx := t.Context()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "lab-node-1"}}
	if _, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "twill-test"}}
	if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil || len(nodes.Items) != 1 || nodes.Items[0].Name != "lab-node-1" {
		t.Errorf("listing nodes: %v, %v; want lab-node-1 only", nodes, err)
	}
	namespaces, err := client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil || !slices.ContainsFunc(namespaces.Items, func(n corev1.Namespace) bool { return n.Name == "twill-test" }) {
		t.Errorf("listing namespaces: %v; twill-test missing from %v", err, namespaces)
	}

	// The controller manager's service account controller gives every namespace its "default"
	// service account (without it no pod can be created there).
	if err := waitFor(10*time.Second, func() error {
		_, err := client.CoreV1().ServiceAccounts("twill-test").Get(ctx, "default", metav1.GetOptions{})
		return err
	}); err != nil {
		t.Errorf("namespace twill-test got no default service account: %v", err)
	}

	// The kubeconfigs are for processes in other lab nodes: use them from the worker's netns.
	admin := filepath.Join(t.TempDir(), "admin.kubeconfig")
	if err := cp.WriteKubeconfig(admin); err != nil {
		t.Fatal(err)
	}
	if got := whoAmI(t, admin, l.worker); got.Username != adminUser || !slices.Contains(got.Groups, "system:masters") {
		t.Errorf("admin kubeconfig authenticates as %+v, want %s in system:masters", got, adminUser)
	}
	kubelet := filepath.Join(t.TempDir(), "kubelet.kubeconfig")
	if err := cp.WriteKubeconfigFor(kubelet, "system:node:w1", "system:nodes"); err != nil {
		t.Fatal(err)
	}
	if got := whoAmI(t, kubelet, l.worker); got.Username != "system:node:w1" || !slices.Contains(got.Groups, "system:nodes") {
		t.Errorf("client-certificate kubeconfig authenticates as %+v, want system:node:w1 in system:nodes", got)
	}

	checkNodeAuthorization(t, kubelet, l.worker)

	if err := cp.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if pids := processesIn(t, l.server.Netns); len(pids) > 0 {
		t.Errorf("processes still running in the control-plane node after Stop: %v", pids)
	}
	if _, err := os.Stat(cp.Dir()); err != nil {
		t.Errorf("Stop removed Dir though RemoveDirOnStop was not set: %v", err)
	}
}

// A control plane started again on its directory has its data and accepts the credentials
// written before (same CA, same token).
func TestRestartOnTheSameDirKeepsStateAndCredentials(t *testing.T) {
	l := newLab(t, "cpr")
	dir := filepath.Join(t.TempDir(), "cp")
	cp, err := Start(t.Context(), Config{Dir: dir, BinDir: l.binDir, Node: l.server})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Stop() })
	kubeconfig := filepath.Join(t.TempDir(), "admin.kubeconfig")
	if err := cp.WriteKubeconfig(kubeconfig); err != nil {
		t.Fatal(err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "survives-restart"}}
	if _, err := kubernetes.NewForConfigOrDie(cp.RESTConfig()).CoreV1().Namespaces().Create(t.Context(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := cp.Stop(); err != nil {
		t.Fatal(err)
	}

	again, err := Start(t.Context(), Config{Dir: dir, BinDir: l.binDir, Node: l.server, RemoveDirOnStop: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = again.Stop() })
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Dial = l.worker.DialContext
	if _, err := kubernetes.NewForConfigOrDie(cfg).CoreV1().Namespaces().Get(t.Context(), "survives-restart", metav1.GetOptions{}); err != nil {
		t.Errorf("after a restart, with the kubeconfig written before: %v", err)
	}
	if err := again.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("RemoveDirOnStop: %s still there after Stop (%v)", dir, err)
	}
}

func TestStartFailureShowsTheLogAndLeavesNothing(t *testing.T) {
	l := newLab(t, "cpf")
	dir := t.TempDir()
	_, err := Start(t.Context(), Config{Dir: dir, BinDir: l.binDir, Node: l.server,
		ExtraAPIServerArgs: []string{"--no-such-flag"}, RemoveDirOnStop: true})
	if err == nil {
		t.Fatal("Start succeeded with a bad apiserver flag")
	}
	msg := err.Error()
	if !strings.Contains(msg, "kube-apiserver.log") || !strings.Contains(msg, "no-such-flag") {
		t.Errorf("the error should name the apiserver's log and quote its end; got:\n%s", msg)
	}
	if pids := processesIn(t, l.server.Netns); len(pids) > 0 {
		t.Errorf("processes left running in the control-plane node after a failed Start: %v", pids)
	}
	// The log stays for the user to read, whatever RemoveDirOnStop says.
	if _, err := os.Stat(filepath.Join(dir, "logs", "kube-apiserver.log")); err != nil {
		t.Errorf("the apiserver's log is gone after the failed Start: %v", err)
	}
}

func waitFor(timeout time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkNodeAuthorization checks the default Node,RBAC with NodeRestriction, as a kubelet
// meets it: with kubelet (system:node:w1) it may register and update its own Node, and neither
// touch another Node (lab-node-1, made by the admin) nor read secrets.
func checkNodeAuthorization(t *testing.T, kubeconfig string, node *underlay.Node) {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg = rest.CopyConfig(cfg)
	cfg.Dial = node.DialContext
	nodes := kubernetes.NewForConfigOrDie(cfg).CoreV1().Nodes()
	ctx := t.Context()
	if _, err := nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "w1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("the kubelet of w1 cannot register its Node: %v", err)
	}
	// A status patch, as the kubelet reports its node's addresses and conditions.
	status := []byte(`{"status":{"addresses":[{"type":"InternalIP","address":"` + node.IP.String() + `"}]}}`)
	if _, err := nodes.Patch(ctx, "w1", types.StrategicMergePatchType, status, metav1.PatchOptions{}, "status"); err != nil {
		t.Errorf("the kubelet of w1 cannot update its Node's status: %v", err)
	}
	patch := []byte(`{"metadata":{"labels":{"lab":"x"}}}`)
	if _, err := nodes.Patch(ctx, "lab-node-1", types.MergePatchType, patch, metav1.PatchOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the kubelet of w1 labelling another Node: want Forbidden, got %v", err)
	}
	secrets := kubernetes.NewForConfigOrDie(cfg).CoreV1().Secrets("kube-system")
	if _, err := secrets.List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the kubelet of w1 listing secrets: want Forbidden, got %v", err)
	}
}

// whoAmI loads kubeconfig as a process in node would, and asks the apiserver who it is.
func whoAmI(t *testing.T, kubeconfig string, node *underlay.Node) authv1.UserInfo {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	// This test runs in the root namespace; open the connection in node, as if run there.
	cfg = rest.CopyConfig(cfg)
	cfg.Dial = node.DialContext
	review, err := kubernetes.NewForConfigOrDie(cfg).AuthenticationV1().SelfSubjectReviews().
		Create(t.Context(), &authv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("self subject review with %s: %v", kubeconfig, err)
	}
	return review.Status.UserInfo
}

// processesIn lists the processes whose network namespace is the one at netnsPath.
func processesIn(t *testing.T, netnsPath string) []string {
	t.Helper()
	var want syscall.Stat_t
	if err := syscall.Stat(netnsPath, &want); err != nil {
		t.Fatal(err)
	}
	matches, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	var pids []string
	for _, m := range matches {
		var st syscall.Stat_t
		pid := strings.Split(m, "/")[2]
		if pid == strconv.Itoa(os.Getpid()) {
			continue // this test may be dialing from inside the namespace right now
		}
		if syscall.Stat(m, &st) == nil && st.Ino == want.Ino && st.Dev == want.Dev {
			comm, _ := os.ReadFile("/proc/" + pid + "/comm")
			pids = append(pids, pid+" "+strings.TrimSpace(string(comm)))
		}
	}
	return pids
}
