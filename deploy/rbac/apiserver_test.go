package rbac_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/twill-net/twill/api/v1alpha1"
	"github.com/twill-net/twill/deploy/crds"
	"github.com/twill-net/twill/deploy/rbac"
	"github.com/twill-net/twill/internal/kube"
	"github.com/twill-net/twill/internal/lab/controlplane"
	"github.com/twill-net/twill/internal/lab/underlay"
	"github.com/twill-net/twill/internal/lab/upstream"
	"github.com/twill-net/twill/internal/testutil"
)

const cnpCRD = "clusternetworkpolicies.policy.networking.k8s.io"

// startAPIServer runs etcd and kube-apiserver (Node,RBAC, the lab's default) in a lab node,
// with twill's CRDs and the agent's RBAC installed; it returns the admin clients and the node.
func startAPIServer(t *testing.T) (*kube.Clients, *controlplane.ControlPlane, *underlay.Node) {
	t.Helper()
	testutil.RequireRoot(t)
	binDir, err := upstream.Binaries(t.Context(), "etcd", "kube-apiserver")
	if errors.Is(err, upstream.ErrNotBuilt) {
		t.Skipf("skipped: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	n, err := underlay.New(fmt.Sprintf("twt-rb%d", os.Getpid()), netip.MustParsePrefix("10.251.7.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("closing the underlay: %v", err)
		}
	})
	node, err := n.AddNode("cp", 0)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := controlplane.Start(t.Context(), controlplane.Config{Dir: t.TempDir(), BinDir: binDir, Node: node})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Stop() })
	admin, err := kube.NewClients(cp.RESTConfig(), "rbac-test")
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := crds.Install(ctx, admin.APIExt); err != nil {
		t.Fatal(err)
	}
	if err := rbac.Install(ctx, admin.Kube); err != nil {
		t.Fatal(err)
	}
	return admin, cp, node
}

// agentClients authenticates with a TokenRequest token of the agent's ServiceAccount, written
// into a kubeconfig as the lab harness writes it for each agent.
func agentClients(t *testing.T, admin *kube.Clients, cp *controlplane.ControlPlane, node *underlay.Node) *kube.Clients {
	t.Helper()
	token, err := rbac.Token(t.Context(), admin.Kube, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "agent.kubeconfig")
	if err := cp.WriteKubeconfigWithToken(path, token); err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	cfg = rest.CopyConfig(cfg)
	cfg.Dial = node.DialContext // this test runs in the root namespace
	c, err := kube.NewClients(cfg, "twill-agent/rbac-test")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

type access struct {
	verb, group, resource, subresource, namespace, name string
}

func (a access) String() string {
	s := a.verb + " " + a.resource
	if a.group != "" {
		s += "." + a.group
	}
	if a.subresource != "" {
		s += "/" + a.subresource
	}
	if a.name != "" {
		s += " " + a.name
	}
	if a.namespace != "" {
		s += " in " + a.namespace
	}
	return s
}

// needed is every API access the agent makes (informers list and watch; see internal/agent and
// internal/ipam/kubestore), plus the Service load balancing to come.
var needed = []access{
	{verb: "get", resource: "nodes", name: "n1"},
	{verb: "list", resource: "nodes"},
	{verb: "watch", resource: "nodes"},
	{verb: "get", resource: "pods", namespace: "default", name: "p"},
	{verb: "list", resource: "pods"},
	{verb: "watch", resource: "pods"},
	{verb: "list", resource: "namespaces"},
	{verb: "watch", resource: "namespaces"},
	{verb: "list", resource: "services"},
	{verb: "watch", resource: "services"},
	{verb: "list", group: "discovery.k8s.io", resource: "endpointslices"},
	{verb: "watch", group: "discovery.k8s.io", resource: "endpointslices"},
	{verb: "list", group: "networking.k8s.io", resource: "networkpolicies"},
	{verb: "watch", group: "networking.k8s.io", resource: "networkpolicies"},
	{verb: "list", group: "policy.networking.k8s.io", resource: "clusternetworkpolicies"},
	{verb: "watch", group: "policy.networking.k8s.io", resource: "clusternetworkpolicies"},
	{verb: "list", group: "apiextensions.k8s.io", resource: "customresourcedefinitions", name: cnpCRD},
	{verb: "watch", group: "apiextensions.k8s.io", resource: "customresourcedefinitions", name: cnpCRD},
	{verb: "list", group: "twill.dev", resource: "ippools"},
	{verb: "create", group: "twill.dev", resource: "ippools"},
	{verb: "get", group: "twill.dev", resource: "ipamblocks", name: "b"},
	{verb: "list", group: "twill.dev", resource: "ipamblocks"},
	{verb: "watch", group: "twill.dev", resource: "ipamblocks"},
	{verb: "create", group: "twill.dev", resource: "ipamblocks"},
	{verb: "delete", group: "twill.dev", resource: "ipamblocks", name: "b"},
	{verb: "update", group: "twill.dev", resource: "ipamblocks", subresource: "status", name: "b"},
}

// excessive are accesses an agent must not have: a compromised node must not read the
// cluster's secrets, rewrite workloads or nodes, or change what IPAM's administrator set.
var excessive = []access{
	{verb: "get", resource: "secrets", namespace: "kube-system", name: "x"},
	{verb: "list", resource: "secrets"},
	{verb: "watch", resource: "secrets"},
	{verb: "list", resource: "configmaps"},
	{verb: "create", resource: "pods", namespace: "default"},
	{verb: "update", resource: "pods", namespace: "default", name: "p"},
	{verb: "patch", resource: "pods", namespace: "default", name: "p"},
	{verb: "delete", resource: "pods", namespace: "default", name: "p"},
	{verb: "patch", resource: "pods", subresource: "status", namespace: "default", name: "p"},
	{verb: "create", resource: "pods", subresource: "exec", namespace: "default", name: "p"},
	{verb: "create", resource: "nodes"},
	{verb: "update", resource: "nodes", name: "n1"},
	{verb: "patch", resource: "nodes", name: "n1"},
	{verb: "delete", resource: "nodes", name: "n1"},
	{verb: "patch", resource: "nodes", subresource: "status", name: "n1"},
	{verb: "get", resource: "nodes", subresource: "proxy", name: "n1"},
	{verb: "create", resource: "namespaces"},
	{verb: "create", resource: "serviceaccounts", subresource: "token", namespace: "kube-system", name: "twill-agent"},
	{verb: "update", resource: "services", namespace: "default", name: "s"},
	{verb: "create", group: "networking.k8s.io", resource: "networkpolicies", namespace: "default"},
	{verb: "list", group: "apiextensions.k8s.io", resource: "customresourcedefinitions"},
	{verb: "get", group: "apiextensions.k8s.io", resource: "customresourcedefinitions", name: "ippools.twill.dev"},
	{verb: "create", group: "apiextensions.k8s.io", resource: "customresourcedefinitions"},
	{verb: "update", group: "apiextensions.k8s.io", resource: "customresourcedefinitions", name: cnpCRD},
	{verb: "update", group: "twill.dev", resource: "ippools", name: "default-ipv4"},
	{verb: "delete", group: "twill.dev", resource: "ippools", name: "default-ipv4"},
	{verb: "update", group: "twill.dev", resource: "ipamblocks", name: "b"},
	{verb: "patch", group: "twill.dev", resource: "ipamblocks", name: "b"},
	{verb: "deletecollection", group: "twill.dev", resource: "ipamblocks"},
	{verb: "create", group: "rbac.authorization.k8s.io", resource: "clusterrolebindings"},
	{verb: "escalate", group: "rbac.authorization.k8s.io", resource: "clusterroles", name: "twill-agent"},
	{verb: "create", group: "coordination.k8s.io", resource: "leases", namespace: "kube-node-lease"},
}

// One API server for all the checks: starting one takes seconds.
func TestAgentRBACOnARealAPIServer(t *testing.T) {
	admin, cp, node := startAPIServer(t)
	agent := agentClients(t, admin, cp, node)
	t.Run("access reviews", func(t *testing.T) { testAccessReviews(t, agent) })
	t.Run("requests", func(t *testing.T) { testRequests(t, admin, agent) })
	// Last: it changes the installed role, then restores it.
	t.Run("install restores the shipped role", func(t *testing.T) { testInstallRestoresTheShippedRole(t, admin) })
}

// The agent's ServiceAccount, with a token as the lab's agents have, may do what the agent
// does and nothing listed as excessive; the API server's own authorizer (Node,RBAC) decides.
func testAccessReviews(t *testing.T, agent *kube.Clients) {
	ctx := t.Context()

	who, err := agent.Kube.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if who.Status.UserInfo.Username != rbac.Username {
		t.Fatalf("the agent's token authenticates as %q, want %q", who.Status.UserInfo.Username, rbac.Username)
	}
	for _, a := range needed {
		if ok, why := allowed(t, agent.Kube, a); !ok {
			t.Errorf("the agent may not %s (%s): a permission missing from the ClusterRole", a, why)
		}
	}
	for _, a := range excessive {
		if ok, why := allowed(t, agent.Kube, a); ok {
			t.Errorf("the agent may %s (%s): excessive", a, why)
		}
	}
}

func allowed(t *testing.T, client kubernetes.Interface, a access) (bool, string) {
	t.Helper()
	review, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(t.Context(), &authzv1.SelfSubjectAccessReview{
		Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authzv1.ResourceAttributes{
			Verb: a.verb, Group: a.group, Resource: a.resource, Subresource: a.subresource,
			Namespace: a.namespace, Name: a.name,
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("access review of %s: %v", a, err)
	}
	return review.Status.Allowed, review.Status.Reason
}

// The same through real requests, the way the agent makes them: IPAM's writes go through,
// writes elsewhere and reads of secrets are forbidden, and the CRD watch works only by name.
func testRequests(t *testing.T, admin, agent *kube.Clients) {
	ctx := t.Context()
	if _, err := admin.Kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	mustWork := map[string]func() error{
		"get its Node": func() error {
			_, err := agent.Kube.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
			return err
		},
		"list pods of all namespaces": func() error {
			_, err := agent.Kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
			return err
		},
		"list the ClusterNetworkPolicy CRD by name": func() error {
			_, err := agent.APIExt.ApiextensionsV1().CustomResourceDefinitions().List(ctx, metav1.ListOptions{
				FieldSelector: fields.OneTermEqualSelector("metadata.name", cnpCRD).String()})
			return err
		},
		"claim, use and release an IPAM block": func() error { return blockLifecycle(ctx, agent.Dynamic) },
		"create an IPPool": func() error {
			return create(ctx, agent.Dynamic.Resource(v1alpha1.IPPoolResource), "IPPool", "p1",
				map[string]any{"cidr": "10.244.0.0/16"})
		},
	}
	for what, do := range mustWork {
		if err := do(); err != nil {
			t.Errorf("the agent cannot %s: %v", what, err)
		}
	}
	mustBeForbidden := map[string]func() error{
		"list secrets": func() error {
			_, err := agent.Kube.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{})
			return err
		},
		"list every CRD": func() error {
			_, err := agent.APIExt.ApiextensionsV1().CustomResourceDefinitions().List(ctx, metav1.ListOptions{})
			return err
		},
		"label a Node": func() error {
			_, err := agent.Kube.CoreV1().Nodes().Patch(ctx, "n1", types.MergePatchType,
				[]byte(`{"metadata":{"labels":{"x":"y"}}}`), metav1.PatchOptions{})
			return err
		},
		"create a pod": func() error {
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "i"}}}}
			_, err := agent.Kube.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{})
			return err
		},
		"delete an IPPool": func() error {
			return agent.Dynamic.Resource(v1alpha1.IPPoolResource).Delete(ctx, "p1", metav1.DeleteOptions{})
		},
	}
	for what, do := range mustBeForbidden {
		if err := do(); !apierrors.IsForbidden(err) {
			t.Errorf("the agent can %s: want Forbidden, got %v", what, err)
		}
	}
}

func create(ctx context.Context, res dynamic.ResourceInterface, kind, name string, spec map[string]any) error {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": v1alpha1.SchemeGroupVersion.String(), "kind": kind,
		"metadata": map[string]any{"name": name}, "spec": spec,
	}}
	_, err := res.Create(ctx, u, metav1.CreateOptions{})
	return err
}

// blockLifecycle does what kubestore does with a block: create, get, status update, delete.
func blockLifecycle(ctx context.Context, dyn dynamic.Interface) error {
	blocks := dyn.Resource(v1alpha1.IPAMBlockResource)
	name := "10-244-0-0-26"
	if err := create(ctx, blocks, "IPAMBlock", name, map[string]any{"cidr": "10.244.0.0/26", "pool": "p1", "node": "n1"}); err != nil {
		return fmt.Errorf("create: %w", err)
	}
	u, err := blocks.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get: %w", err)
	}
	if err := unstructured.SetNestedMap(u.Object, map[string]any{"allocated": int64(1), "capacity": int64(64)}, "status"); err != nil {
		return err
	}
	if u, err = blocks.UpdateStatus(ctx, u, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("status update: %w", err)
	}
	uid, rv := u.GetUID(), u.GetResourceVersion()
	if err := blocks.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid, ResourceVersion: &rv}}); err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	return nil
}

// Install brings a changed installation back to the shipped one: a rule someone added goes.
func testInstallRestoresTheShippedRole(t *testing.T, admin *kube.Clients) {
	ctx := t.Context()
	roles := admin.Kube.RbacV1().ClusterRoles()
	role, err := roles.Get(ctx, rbac.ClusterRoleName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	role.Rules = append(role.Rules, rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get"}})
	if _, err := roles.Update(ctx, role, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := rbac.Install(ctx, admin.Kube); err != nil {
		t.Fatal(err)
	}
	want, err := rbac.Objects()
	if err != nil {
		t.Fatal(err)
	}
	got, err := roles.Get(ctx, rbac.ClusterRoleName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	grantsSecrets := slices.ContainsFunc(got.Rules, func(r rbacv1.PolicyRule) bool { return slices.Contains(r.Resources, "secrets") })
	if grantsSecrets || len(got.Rules) != len(want.ClusterRole.Rules) {
		t.Errorf("after Install the role has %d rules, want the shipped %d: %+v", len(got.Rules), len(want.ClusterRole.Rules), got.Rules)
	}
}
