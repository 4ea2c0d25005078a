package conformance

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"
	"sigs.k8s.io/yaml"
)

// PodRef names a pod of the shape.
type PodRef struct{ NS, Name string }

func (p PodRef) String() string { return p.NS + "/" + p.Name }

// PortProto is a served port.
type PortProto struct {
	Port     int
	Protocol corev1.Protocol
}

func (p PortProto) String() string { return fmt.Sprintf("%d/%s", p.Port, p.Protocol) }

// AllPorts are every port the shape's pods serve.
var AllPorts = []PortProto{{80, corev1.ProtocolTCP}, {81, corev1.ProtocolTCP}, {80, corev1.ProtocolUDP}, {81, corev1.ProtocolUDP}}

// CNPCase is a ClusterNetworkPolicy case: policies of every tier, and the verdict the upstream
// API's documentation gives for each probe.
type CNPCase struct {
	Name     string
	CNPs     []*v1alpha2.ClusterNetworkPolicy
	Policies []*networkingv1.NetworkPolicy
	// Ports are probed between every pair of pods (default: 80/TCP and 81/UDP).
	Ports []PortProto
	// Expect gives the documented verdict for a probe between two different pods (a pod
	// reaching itself is always allowed: a pod cannot block access to itself).
	Expect func(from, to PodRef, port PortProto) Verdict
}

// cnpResource is where ClusterNetworkPolicies live in the API.
var cnpResource = v1alpha2.SchemeGroupVersion.WithResource("clusternetworkpolicies")

// InstallCNPCRD creates the ClusterNetworkPolicy CRD from its manifest (as shipped by
// sigs.k8s.io/network-policy-api) unless the cluster has it, and waits until it is
// established.
func (c *Cluster) InstallCNPCRD(ctx context.Context, manifest []byte) error {
	crd := &apiextv1.CustomResourceDefinition{}
	if err := yaml.Unmarshal(manifest, crd); err != nil {
		return fmt.Errorf("reading the CRD manifest: %w", err)
	}
	client, err := apiextclient.NewForConfig(c.REST)
	if err != nil {
		return err
	}
	crds := client.ApiextensionsV1().CustomResourceDefinitions()
	if _, err := crds.Create(ctx, crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating the ClusterNetworkPolicy CRD: %w", err)
	}
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		got, err := crds.Get(ctx, crd.Name, metav1.GetOptions{})
		if err == nil {
			for _, cond := range got.Status.Conditions {
				if cond.Type == apiextv1.Established && cond.Status == apiextv1.ConditionTrue {
					return nil
				}
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("the ClusterNetworkPolicy CRD is not established after a minute")
}

func (c *Cluster) dynamicClient() (dynamic.Interface, error) { return dynamic.NewForConfig(c.REST) }

// CreateCNP creates a ClusterNetworkPolicy.
func (c *Cluster) CreateCNP(ctx context.Context, cnp *v1alpha2.ClusterNetworkPolicy) error {
	dyn, err := c.dynamicClient()
	if err != nil {
		return err
	}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(cnp)
	if err != nil {
		return err
	}
	u := &unstructured.Unstructured{Object: obj}
	u.SetAPIVersion(v1alpha2.SchemeGroupVersion.String())
	u.SetKind("ClusterNetworkPolicy")
	if _, err := dyn.Resource(cnpResource).Create(ctx, u, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating ClusterNetworkPolicy %s: %w", cnp.Name, err)
	}
	return nil
}

// DeleteAllCNPs deletes every ClusterNetworkPolicy.
func (c *Cluster) DeleteAllCNPs(ctx context.Context) error {
	dyn, err := c.dynamicClient()
	if err != nil {
		return err
	}
	err = dyn.Resource(cnpResource).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting the ClusterNetworkPolicies: %w", err)
	}
	return nil
}

// WaitCNPEnforced creates a probe ClusterNetworkPolicy (Admin Deny x/b -> x/a) and waits until
// x/b's TCP connections to x/a are dropped, then deletes it: the agents watch the CRD (which
// may have been installed while they ran) and enforce it.
func (s *Suite) WaitCNPEnforced(ctx context.Context, timeout time.Duration) error {
	c := s.Cluster
	a, err := s.initial.GetPod("x", "a")
	if err != nil {
		return err
	}
	cnp := &v1alpha2.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "conformance-readiness"},
		Spec: v1alpha2.ClusterNetworkPolicySpec{
			Tier: v1alpha2.AdminTier, Priority: 0,
			Subject: v1alpha2.ClusterNetworkPolicySubject{Pods: podsIn("x", "a")},
			Ingress: []v1alpha2.ClusterNetworkPolicyIngressRule{{
				Action: v1alpha2.ClusterNetworkPolicyRuleActionDeny,
				From:   []v1alpha2.ClusterNetworkPolicyIngressPeer{{Pods: podsIn("x", "b")}},
			}},
		},
	}
	if err := c.CreateCNP(ctx, cnp); err != nil {
		return err
	}
	addr := net.JoinHostPort(a.IP, "80")
	deadline := time.Now().Add(timeout)
	var last ProbeResult
	for time.Now().Before(deadline) {
		if last = c.Probe(ctx, "x", "b", corev1.ProtocolTCP, addr); last.Verdict == Blocked {
			return c.DeleteAllCNPs(ctx)
		}
		time.Sleep(500 * time.Millisecond)
	}
	_ = c.DeleteAllCNPs(ctx)
	return fmt.Errorf("an Admin Deny ClusterNetworkPolicy x/b -> x/a not enforced after %s (last probe: %s)", timeout, last.Detail)
}

// RunCNP runs a ClusterNetworkPolicy case: it resets the shape, creates the case's policies,
// probes every pair of pods on the case's ports and compares with the documented verdicts.
// The case's ClusterNetworkPolicies are deleted at the end.
func (s *Suite) RunCNP(ctx context.Context, tc CNPCase) (out CaseResult) {
	start := time.Now()
	out = CaseResult{Case: tc.Name, Steps: 1}
	defer func() { out.Took = time.Since(start) }()
	c := s.Cluster
	if err := s.reset(ctx); err != nil {
		out.Err = err
		return out
	}
	if err := c.DeleteAllCNPs(ctx); err != nil {
		out.Err = err
		return out
	}
	defer func() { _ = c.DeleteAllCNPs(context.WithoutCancel(ctx)) }()
	for _, cnp := range tc.CNPs {
		if err := c.CreateCNP(ctx, cnp); err != nil {
			out.Err = err
			return out
		}
	}
	for _, np := range tc.Policies {
		if _, err := c.Kube.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, np, metav1.CreateOptions{}); err != nil {
			out.Err = fmt.Errorf("creating NetworkPolicy %s/%s: %w", np.Namespace, np.Name, err)
			return out
		}
	}
	time.Sleep(s.Wait)
	ports := tc.Ports
	if len(ports) == 0 {
		ports = []PortProto{{80, corev1.ProtocolTCP}, {81, corev1.ProtocolUDP}}
	}
	type check struct {
		from, to PodRef
		toIP     string
		port     PortProto
		want     Verdict
		got      ProbeResult
		missed   bool
	}
	var checks []*check
	for _, from := range s.initial.Pods {
		for _, to := range s.initial.Pods {
			for _, pp := range ports {
				f, t := PodRef{from.Namespace, from.Name}, PodRef{to.Namespace, to.Name}
				want := Allowed
				if f != t {
					want = tc.Expect(f, t, pp)
				}
				checks = append(checks, &check{from: f, to: t, toIP: to.IP, port: pp, want: want})
			}
		}
	}
	out.Probes = len(checks)
	pending := checks
	for try := 0; ; try++ {
		// One exec per source pod probes all of its pending checks.
		specs := make([]ProbeSpec, len(pending))
		for i, ch := range pending {
			specs[i] = ProbeSpec{NS: ch.from.NS, Pod: ch.from.Name, Protocol: ch.port.Protocol,
				Addr: net.JoinHostPort(ch.toIP, strconv.Itoa(ch.port.Port))}
		}
		var wrong []*check
		for i, got := range c.ProbeMany(ctx, specs) {
			ch := pending[i]
			ch.got = got
			if got.Verdict != ch.want {
				ch.missed = true
				wrong = append(wrong, ch)
			}
		}
		pending = wrong
		if len(wrong) == 0 || try >= s.Retries || ctx.Err() != nil {
			break
		}
		time.Sleep(s.RetryWait)
	}
	for _, ch := range checks {
		if ch.missed && ch.got.Verdict == ch.want {
			out.Settled++
		}
	}
	for _, ch := range pending {
		out.Mismatches = append(out.Mismatches, Mismatch{Case: tc.Name, Step: 1,
			Probe:  fmt.Sprintf("%s -> %s %s", ch.from, ch.to, ch.port),
			Oracle: ch.want, Twill: ch.got.Verdict, Detail: ch.got.Detail})
	}
	slices.SortFunc(out.Mismatches, func(a, b Mismatch) int { return strings.Compare(a.Probe, b.Probe) })
	return out
}

// podsIn selects pods by name (label pod=) in a namespace (label ns=).
func podsIn(ns, pod string) *v1alpha2.NamespacedPod {
	return &v1alpha2.NamespacedPod{
		NamespaceSelector: metav1.LabelSelector{MatchLabels: map[string]string{"ns": ns}},
		PodSelector:       metav1.LabelSelector{MatchLabels: map[string]string{"pod": pod}},
	}
}

// namespace selects a namespace by its ns= label.
func namespace(ns string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: map[string]string{"ns": ns}}
}
