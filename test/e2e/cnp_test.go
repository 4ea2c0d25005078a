package e2e

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"
	"sigs.k8s.io/yaml"

	"github.com/twill-net/twill/internal/lab/cluster"
)

// cnpWait bounds how long the agents take to notice a ClusterNetworkPolicy CRD installed while
// they run (they watch for it) and enforce the first policy.
const cnpWait = 10 * time.Second

// The Admin tier is evaluated before NetworkPolicy: an Admin Deny keeps a client out although
// a NetworkPolicy allows everything, while another client still gets in. The CRD is installed
// while the agents run, as an operator would, without restarting them.
func TestClusterNetworkPolicyAdminDenyBeatsNetworkPolicy(t *testing.T) {
	c := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	installCNPCRD(t, ctx, c)
	ns := policyNamespace(t, ctx, c)
	server := addLabelledPod(t, ctx, c, "n1", ns, "server", map[string]string{"app": "server"})
	blocked := addLabelledPod(t, ctx, c, "n2", ns, "blocked", map[string]string{"role": "blocked"})
	allowed := addLabelledPod(t, ctx, c, "n3", ns, "allowed", map[string]string{"role": "client"})
	serveEcho(t, server.Sandbox, netip.Addr{})
	createPolicy(t, ctx, c, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "allow-all", Namespace: ns},
		Spec: networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{}},
		},
	})
	waitReach(t, ctx, blocked, server, true, "NetworkPolicy allows all: blocked -> server")

	inNS := metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}}
	createCNP(t, ctx, c, &v1alpha2.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: ns + "-deny-blocked"},
		Spec: v1alpha2.ClusterNetworkPolicySpec{
			Tier: v1alpha2.AdminTier, Priority: 10,
			Subject: v1alpha2.ClusterNetworkPolicySubject{Namespaces: &inNS},
			Ingress: []v1alpha2.ClusterNetworkPolicyIngressRule{{
				Name: "deny-blocked", Action: v1alpha2.ClusterNetworkPolicyRuleActionDeny,
				From: []v1alpha2.ClusterNetworkPolicyIngressPeer{{Pods: &v1alpha2.NamespacedPod{
					NamespaceSelector: inNS,
					PodSelector:       metav1.LabelSelector{MatchLabels: map[string]string{"role": "blocked"}},
				}}},
			}},
		},
	})
	deadline := time.Now().Add(cnpWait)
	for time.Now().Before(deadline) && !isDropped(dialOnce(ctx, blocked.Sandbox, server.IPv4(), 300*time.Millisecond)) {
		time.Sleep(200 * time.Millisecond)
	}
	expectBlocked(t, ctx, blocked, server, "Admin Deny over a NetworkPolicy allowing all: blocked -> server")
	if err := echo(ctx, allowed.Sandbox, server.IPv4()); err != nil {
		t.Errorf("a client no Admin rule names: %v", err)
	}
}

// installCNPCRD installs the ClusterNetworkPolicy CRD shipped by sigs.k8s.io/network-policy-api
// (the module version twill builds against), unless the lab has it already. It is the
// experimental channel's, a superset of the standard one: node peers are experimental in
// v1alpha2, and twill enforces them.
func installCNPCRD(t *testing.T, ctx context.Context, c *cluster.Cluster) {
	t.Helper()
	out, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/network-policy-api").Output()
	if err != nil {
		t.Fatalf("finding the network-policy-api module: %v", err)
	}
	data, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), "config/crd/experimental/policy.networking.k8s.io_clusternetworkpolicies.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	crd := &apiextv1.CustomResourceDefinition{}
	if err := yaml.Unmarshal(data, crd); err != nil {
		t.Fatal(err)
	}
	crds := c.Clients.APIExt.ApiextensionsV1().CustomResourceDefinitions()
	if _, err := crds.Create(ctx, crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	pollUntil(t, 30*time.Second, "ClusterNetworkPolicy CRD established", func() (bool, string) {
		got, err := crds.Get(ctx, crd.Name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, cond := range got.Status.Conditions {
			if cond.Type == apiextv1.Established && cond.Status == apiextv1.ConditionTrue {
				return true, ""
			}
		}
		return false, "not established"
	})
}

func createCNP(t *testing.T, ctx context.Context, c *cluster.Cluster, cnp *v1alpha2.ClusterNetworkPolicy) {
	t.Helper()
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(cnp)
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: obj}
	u.SetAPIVersion(v1alpha2.SchemeGroupVersion.String())
	u.SetKind("ClusterNetworkPolicy")
	res := c.Clients.Dynamic.Resource(v1alpha2.SchemeGroupVersion.WithResource("clusternetworkpolicies"))
	if _, err := res.Create(ctx, u, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := res.Delete(context.Background(), cnp.Name, metav1.DeleteOptions{}); err != nil {
			t.Errorf("deleting ClusterNetworkPolicy %s: %v", cnp.Name, err)
		}
	})
}
