package labctl

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/twill-net/twill/internal/lab/kubenode"
	"github.com/twill-net/twill/internal/lab/upstream"
)

// NETWORK SAFETY: every directive of the Corefile is one that answers from the lab's own API or
// locally. A plugin that queries another resolver (forward, grpc, etcd, a cloud's DNS...) is
// not in the list, so adding one fails here.
func TestCorefileAnswersEverythingLocally(t *testing.T) {
	local := []string{"errors", "health", "ready", "kubernetes", "pods", "ttl", "cache", "loadbalance", "template", "rcode"}
	s := bufio.NewScanner(strings.NewReader(Corefile))
	zones := 0
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		if line == "" || line == "}" {
			continue
		}
		if strings.HasSuffix(line, "{") && strings.Contains(strings.Fields(line)[0], ":53") {
			zones++
			continue
		}
		if directive := strings.Fields(line)[0]; !slices.Contains(local, directive) {
			t.Errorf("Corefile directive %q is not one that answers locally: %q", directive, line)
		}
	}
	if zones != 2 || !strings.Contains(Corefile, "kubernetes cluster.local in-addr.arpa ip6.arpa") || !strings.Contains(Corefile, "\n.:53 {") {
		t.Errorf("the Corefile must serve the cluster's zones from the API and every other name itself:\n%s", Corefile)
	}
	if strings.Contains(Corefile, "forward") || strings.Contains(Corefile, "fallthrough") {
		t.Errorf("the Corefile forwards or falls through:\n%s", Corefile)
	}
}

func TestCoreDNSImageIsThePinnedVersion(t *testing.T) {
	root, err := upstream.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	mod, err := os.ReadFile(filepath.Join(root, "tools", "coredns", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	pinned := slices.ContainsFunc(strings.Split(string(mod), "\n"), func(line string) bool {
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "require "))
		return len(f) >= 2 && f[0] == "github.com/coredns/coredns" && f[1] == CoreDNSVersion
	})
	if !pinned {
		t.Errorf("tools/coredns/go.mod does not pin github.com/coredns/coredns %s (the image's tag)", CoreDNSVersion)
	}
	if !strings.HasPrefix(CoreDNSImage, "registry.twill.local/") {
		t.Errorf("image %s is not fully qualified under the lab's registry name", CoreDNSImage)
	}
}

func TestDNSObjectsWireTogether(t *testing.T) {
	m := dnsObjects(CoreDNSImage, kubenode.ClusterDNS)
	// The Service sits where the kubelets send pods' queries: the 10th address of the range.
	svc := m.Service
	serviceRange := netip.MustParsePrefix("10.96.0.0/16")
	tenth := serviceRange.Addr()
	for range 10 {
		tenth = tenth.Next()
	}
	if svc.Namespace != "kube-system" || svc.Name != "kube-dns" || svc.Spec.ClusterIP != tenth.String() {
		t.Errorf("Service %s/%s at %s, want kube-system/kube-dns at %s", svc.Namespace, svc.Name, svc.Spec.ClusterIP, tenth)
	}
	var protos []corev1.Protocol
	for _, p := range svc.Spec.Ports {
		if p.Port == 53 && p.TargetPort.IntValue() == 53 {
			protos = append(protos, p.Protocol)
		}
	}
	if !slices.Contains(protos, corev1.ProtocolUDP) || !slices.Contains(protos, corev1.ProtocolTCP) {
		t.Errorf("Service ports %+v: want 53 over UDP and TCP", svc.Spec.Ports)
	}
	d := m.Deployment
	pod := d.Spec.Template
	if *d.Spec.Replicas != 2 {
		t.Errorf("%d replicas, want 2", *d.Spec.Replicas)
	}
	for k, v := range svc.Spec.Selector {
		if pod.Labels[k] != v || d.Spec.Selector.MatchLabels[k] != v {
			t.Errorf("Service selects %s=%s, pods are labelled %v", k, v, pod.Labels)
		}
	}
	c := pod.Spec.Containers[0]
	if c.Image != CoreDNSImage || c.ImagePullPolicy != corev1.PullNever {
		t.Errorf("container image %s pull %s, want %s with Never", c.Image, c.ImagePullPolicy, CoreDNSImage)
	}
	if pod.Spec.ServiceAccountName != m.ServiceAccount.Name || m.Binding.Subjects[0].Name != m.ServiceAccount.Name ||
		m.Binding.RoleRef.Name != m.ClusterRole.Name {
		t.Error("the pods' ServiceAccount is not the one bound to the ClusterRole")
	}
	// The Corefile of the ConfigMap is where the program is told to read it.
	if m.ConfigMap.Data["Corefile"] != Corefile || pod.Spec.Volumes[0].ConfigMap.Name != m.ConfigMap.Name ||
		!slices.Contains(c.Args, c.VolumeMounts[0].MountPath+"/Corefile") {
		t.Errorf("Corefile not wired: args %v, mounts %+v", c.Args, c.VolumeMounts)
	}
	// The probes ask the ports the Corefile serves health and readiness on.
	if c.LivenessProbe.HTTPGet.Port.IntValue() != dnsHealthPort || c.ReadinessProbe.HTTPGet.Port.IntValue() != dnsReadyPort ||
		!strings.Contains(Corefile, fmt.Sprintf("health :%d\n", dnsHealthPort)) || !strings.Contains(Corefile, fmt.Sprintf("ready :%d\n", dnsReadyPort)) {
		t.Errorf("probes on %d and %d do not match the Corefile:\n%s", dnsHealthPort, dnsReadyPort, Corefile)
	}
	// What the kubernetes plugin lists and watches.
	can := func(group, resource string) bool {
		for _, r := range m.ClusterRole.Rules {
			if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) &&
				slices.Contains(r.Verbs, "list") && slices.Contains(r.Verbs, "watch") {
				return true
			}
		}
		return false
	}
	for _, gr := range [][2]string{{"discovery.k8s.io", "endpointslices"}, {"", "services"}, {"", "namespaces"}, {"", "pods"}} {
		if !can(gr[0], gr[1]) {
			t.Errorf("the ClusterRole does not let CoreDNS list and watch %s", gr[1])
		}
	}
}

func TestCreateDNSMakesEveryObjectAndMayRunTwice(t *testing.T) {
	kube := fake.NewClientset()
	m := dnsObjects(CoreDNSImage, kubenode.ClusterDNS)
	for range 2 {
		if err := createDNS(t.Context(), kube, m); err != nil {
			t.Fatal(err)
		}
	}
	ctx := t.Context()
	if _, err := kube.CoreV1().Services("kube-system").Get(ctx, "kube-dns", metav1.GetOptions{}); err != nil {
		t.Error(err)
	}
	if _, err := kube.AppsV1().Deployments("kube-system").Get(ctx, "coredns", metav1.GetOptions{}); err != nil {
		t.Error(err)
	}
	if _, err := kube.RbacV1().ClusterRoleBindings().Get(ctx, "system:coredns", metav1.GetOptions{}); err != nil {
		t.Error(err)
	}
}

// waitDNSAnswers gives up with the last thing it saw when the server is silent.
func TestWaitDNSAnswersReportsASilentServer(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	var d net.Dialer
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		return d.DialContext(ctx, network, addr)
	}
	start := time.Now()
	err = waitDNSAnswers(t.Context(), dial, pc.LocalAddr().String(), "10.96.0.1", 2*time.Second)
	if err == nil || !strings.Contains(err.Error(), "does not answer") {
		t.Errorf("waitDNSAnswers against a silent server: %v", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("a 2s wait took %s", took)
	}
}
