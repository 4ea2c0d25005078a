package conformance

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/mattfenwick/cyclonus/pkg/connectivity/probe"
	"github.com/mattfenwick/cyclonus/pkg/generator"
	"github.com/mattfenwick/cyclonus/pkg/matcher"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The default shape of cyclonus's truth table.
var (
	Namespaces = []string{"x", "y", "z"}
	Pods       = []string{"a", "b", "c"}
)

// Suite is the default shape set up on a cluster, ready to run cases.
type Suite struct {
	Cluster *Cluster
	// Wait is how long to let a change take effect before the first probe (cyclonus's
	// perturbation wait); a probe that disagrees with the oracle is tried Retries more
	// times, RetryWait apart, before it counts as a mismatch.
	Wait, RetryWait time.Duration
	Retries         int

	// initial is the oracle's model of the shape as set up: namespace labels as the API
	// holds them, pods with their labels, IPs and named ports.
	initial *probe.Resources
}

// Setup creates namespaces x, y, z (labelled ns=<name>) and pods a, b, c in each (labelled
// pod=<name>), all serving, and returns the suite.
func Setup(ctx context.Context, c *Cluster) (*Suite, error) {
	s := &Suite{Cluster: c, Wait: 2 * time.Second, RetryWait: time.Second, Retries: 2}
	res := &probe.Resources{Namespaces: map[string]map[string]string{}}
	for _, ns := range Namespaces {
		labels, err := c.CreateNamespace(ctx, ns, map[string]string{"ns": ns})
		if err != nil {
			return nil, err
		}
		res.Namespaces[ns] = labels
	}
	var containers []*probe.Container
	for _, port := range servedPorts {
		for _, proto := range servedProtocols {
			containers = append(containers, probe.NewDefaultContainer(port, proto, false, ""))
		}
	}
	type made struct {
		ns, name string
		ip       string
		err      error
	}
	var todo []*made
	for _, ns := range Namespaces {
		for _, name := range Pods {
			todo = append(todo, &made{ns: ns, name: name})
		}
	}
	forEach(ctx, len(todo), todo, func(ctx context.Context, m *made) {
		m.ip, m.err = c.CreatePod(ctx, m.ns, m.name, map[string]string{"pod": m.name})
	})
	for _, m := range todo {
		if m.err != nil {
			return nil, m.err
		}
		res.Pods = append(res.Pods, probe.NewPod(m.ns, m.name, map[string]string{"pod": m.name}, m.ip, containers))
	}
	s.initial = res
	return s, nil
}

// Cases are cyclonus's generated cases selected by tags (none: all) less those with any of
// excluded. Generated policies that name a pod IP use z/c's, as cyclonus does.
func (s *Suite) Cases(tags, excluded []string) []*generator.TestCase {
	zc, err := s.initial.GetPod("z", "c")
	if err != nil {
		panic(err) // Setup made it
	}
	// allowDNS false: probes go to pod IPs, no name is resolved.
	gen := generator.NewTestCaseGenerator(false, zc.IP, Namespaces, tags, excluded)
	return gen.GenerateTestCases()
}

// Mismatch is a probe whose result differs from the oracle's.
type Mismatch struct {
	Case  string
	Step  int
	Probe string // "x/a -> y/b 80/TCP (serve-80-tcp)"
	// Oracle is what cyclonus's matcher expects; Twill what the packets did.
	Oracle, Twill Verdict
	Detail        string
}

func (m Mismatch) String() string {
	return fmt.Sprintf("%q step %d: %s: oracle %s, twill %s (%s)", m.Case, m.Step, m.Probe, m.Oracle, m.Twill, m.Detail)
}

// CaseResult is the outcome of one case.
type CaseResult struct {
	Case   string
	Steps  int
	Probes int
	// Mismatches persisted through every retry; Settled counts probes that disagreed first
	// and agreed on a retry (enforcement still catching up).
	Mismatches []Mismatch
	Settled    int
	// Loopback counts probes from a pod to itself where the oracle said blocked: Kubernetes
	// documents that a pod cannot block access to itself, so those expect allowed.
	Loopback int
	// Unprobed counts the oracle's probes to ports the pods do not have (named ports that do
	// not resolve, SCTP): cyclonus reports them without running them, and so does this.
	Unprobed int
	Err      error
	Took     time.Duration
}

// caseState is what the oracle knows while a case runs.
type caseState struct {
	res      *probe.Resources
	policies []*networkingv1.NetworkPolicy
	// madeNamespaces and madePods are what the case added beyond the shape.
	madeNamespaces []string
}

// Run runs one case: it resets the shape, then for each step applies the actions, waits,
// probes the step's matrix and compares it with the oracle.
func (s *Suite) Run(ctx context.Context, tc *generator.TestCase) (out CaseResult) {
	start := time.Now()
	out = CaseResult{Case: tc.Description, Steps: len(tc.Steps)}
	st := &caseState{res: s.initial}
	defer func() { out.Took = time.Since(start) }()
	if err := s.reset(ctx); err != nil {
		out.Err = fmt.Errorf("resetting the shape: %w", err)
		return out
	}
	defer func() {
		for _, ns := range st.madeNamespaces {
			if _, ok := st.res.Namespaces[ns]; ok {
				_ = s.Cluster.DeleteNamespace(context.WithoutCancel(ctx), ns)
			}
		}
	}()
	for i, step := range tc.Steps {
		for _, a := range step.Actions {
			if err := s.apply(ctx, st, a); err != nil {
				out.Err = fmt.Errorf("step %d: %w", i+1, err)
				return out
			}
		}
		select {
		case <-ctx.Done():
			out.Err = ctx.Err()
			return out
		case <-time.After(s.Wait):
		}
		s.probeStep(ctx, st, tc.Description, i+1, step.Probe, &out)
		if ctx.Err() != nil {
			out.Err = ctx.Err()
			return out
		}
	}
	return out
}

// reset puts the shape back as Setup made it: no policy, the labels it had, no extra pod.
func (s *Suite) reset(ctx context.Context) error {
	c := s.Cluster
	if err := c.DeleteAllPolicies(ctx, Namespaces); err != nil {
		return err
	}
	for _, ns := range Namespaces {
		want := s.initial.Namespaces[ns]
		got, err := c.Kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !maps.Equal(got.Labels, want) {
			if _, err := c.SetNamespaceLabels(ctx, ns, want); err != nil {
				return err
			}
		}
		pods, err := c.Kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, p := range pods.Items {
			orig, err := s.initial.GetPod(ns, p.Name)
			if err != nil {
				if err := c.DeletePod(ctx, ns, p.Name); err != nil {
					return err
				}
				continue
			}
			if !maps.Equal(p.Labels, orig.Labels) {
				if err := c.SetPodLabels(ctx, ns, p.Name, orig.Labels); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// apply carries one action out on the cluster and in the oracle's model, as cyclonus's
// interpreter does.
func (s *Suite) apply(ctx context.Context, st *caseState, a *generator.Action) error {
	c := s.Cluster
	np := c.Kube.NetworkingV1()
	switch {
	case a.CreatePolicy != nil:
		p := a.CreatePolicy.Policy
		st.policies = append(st.policies, p)
		_, err := np.NetworkPolicies(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
		return err
	case a.UpdatePolicy != nil:
		p := a.UpdatePolicy.Policy
		i := slices.IndexFunc(st.policies, func(q *networkingv1.NetworkPolicy) bool { return q.Namespace == p.Namespace && q.Name == p.Name })
		if i < 0 {
			return fmt.Errorf("updating policy %s/%s: the case never created it", p.Namespace, p.Name)
		}
		st.policies[i] = p
		cur, err := np.NetworkPolicies(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Spec = p.Spec
		_, err = np.NetworkPolicies(p.Namespace).Update(ctx, cur, metav1.UpdateOptions{})
		return err
	case a.DeletePolicy != nil:
		d := a.DeletePolicy
		st.policies = slices.DeleteFunc(st.policies, func(q *networkingv1.NetworkPolicy) bool { return q.Namespace == d.Namespace && q.Name == d.Name })
		return np.NetworkPolicies(d.Namespace).Delete(ctx, d.Name, metav1.DeleteOptions{})
	case a.CreateNamespace != nil:
		labels, err := c.CreateNamespace(ctx, a.CreateNamespace.Namespace, a.CreateNamespace.Labels)
		if err != nil {
			return err
		}
		st.madeNamespaces = append(st.madeNamespaces, a.CreateNamespace.Namespace)
		st.res, err = st.res.CreateNamespace(a.CreateNamespace.Namespace, labels)
		return err
	case a.SetNamespaceLabels != nil:
		labels, err := c.SetNamespaceLabels(ctx, a.SetNamespaceLabels.Namespace, a.SetNamespaceLabels.Labels)
		if err != nil {
			return err
		}
		st.res, err = st.res.UpdateNamespaceLabels(a.SetNamespaceLabels.Namespace, labels)
		return err
	case a.DeleteNamespace != nil:
		var err error
		if st.res, err = st.res.DeleteNamespace(a.DeleteNamespace.Namespace); err != nil {
			return err
		}
		return c.DeleteNamespace(ctx, a.DeleteNamespace.Namespace)
	case a.CreatePod != nil:
		cp := a.CreatePod
		res, err := st.res.CreatePod(cp.Namespace, cp.Pod, cp.Labels)
		if err != nil {
			return err
		}
		ip, err := c.CreatePod(ctx, cp.Namespace, cp.Pod, cp.Labels)
		if err != nil {
			return err
		}
		p, err := res.GetPod(cp.Namespace, cp.Pod)
		if err != nil {
			return err
		}
		p.IP, st.res = ip, res
		return nil
	case a.SetPodLabels != nil:
		sp := a.SetPodLabels
		var err error
		if st.res, err = st.res.SetPodLabels(sp.Namespace, sp.Pod, sp.Labels); err != nil {
			return err
		}
		return c.SetPodLabels(ctx, sp.Namespace, sp.Pod, sp.Labels)
	case a.DeletePod != nil:
		var err error
		if st.res, err = st.res.DeletePod(a.DeletePod.Namespace, a.DeletePod.Pod); err != nil {
			return err
		}
		return c.DeletePod(ctx, a.DeletePod.Namespace, a.DeletePod.Pod)
	case a.ReadNetworkPolicies != nil:
		for _, ns := range a.ReadNetworkPolicies.Namespaces {
			list, err := np.NetworkPolicies(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			for i := range list.Items {
				st.policies = append(st.policies, &list.Items[i])
			}
		}
		return nil
	}
	return fmt.Errorf("an action of a kind this runner does not know: %+v", a)
}

// check is one probe of a step: what the oracle expects and what the packets did.
type check struct {
	job    *probe.Job
	want   Verdict
	got    ProbeResult
	missed bool // disagreed at least once
}

// expectations asks the oracle for every probe of a step's matrix (by pod IP): cyclonus's
// job builder lists the probes (resolving named ports on the destination pod), and its matcher,
// fed the policies in force, says which are allowed. unprobed counts the probes cyclonus lists
// but never runs (a port the pod lacks); loopback counts the pod-to-itself probes the oracle
// blocks, which Kubernetes documents as always allowed (a pod cannot block access to itself).
func expectations(res *probe.Resources, policies []*networkingv1.NetworkPolicy, cfg *generator.ProbeConfig) (checks []*check, unprobed, loopback int) {
	pc := *cfg
	// Pod IPs: the lab has no cluster DNS, and policy is about pods, not Services.
	pc.Mode = generator.ProbeModePodIP
	jobs := (&probe.JobBuilder{}).GetJobsForProbeConfig(res, &pc)
	unprobed = len(jobs.BadNamedPort) + len(jobs.BadPortProtocol)
	oracle := matcher.BuildNetworkPolicies(true, policies)
	for _, job := range jobs.Valid {
		if job.Protocol != corev1.ProtocolTCP && job.Protocol != corev1.ProtocolUDP {
			unprobed++
			continue
		}
		want := Blocked
		// What cyclonus's simulated runner does, less its trace logging (which renders a
		// table per probe even when tracing is off).
		if oracle.IsTrafficAllowed(job.Traffic()).IsAllowed() {
			want = Allowed
		}
		if job.FromKey == job.ToKey && want == Blocked {
			want = Allowed
			loopback++
		}
		checks = append(checks, &check{job: job, want: want})
	}
	return checks, unprobed, loopback
}

// probeStep probes the step's matrix and adds what disagrees with the oracle.
func (s *Suite) probeStep(ctx context.Context, st *caseState, caseName string, step int, cfg *generator.ProbeConfig, out *CaseResult) {
	checks, unprobed, loopback := expectations(st.res, st.policies, cfg)
	out.Unprobed += unprobed
	out.Loopback += loopback
	out.Probes += len(checks)
	pending := checks
	for try := 0; ; try++ {
		// One exec per source pod probes all of its pending checks.
		specs := make([]ProbeSpec, len(pending))
		for i, ch := range pending {
			j := ch.job
			specs[i] = ProbeSpec{NS: j.FromNamespace, Pod: j.FromPod, Protocol: j.Protocol, Addr: j.ToAddress()}
		}
		var wrong []*check
		for i, got := range s.Cluster.ProbeMany(ctx, specs) {
			ch := pending[i]
			ch.got = got
			if got.Verdict != ch.want {
				ch.missed = true
				wrong = append(wrong, ch)
			}
		}
		if len(wrong) == 0 || try >= s.Retries || ctx.Err() != nil {
			pending = wrong
			break
		}
		pending = wrong
		time.Sleep(s.RetryWait)
	}
	for _, ch := range checks {
		if ch.missed && ch.got.Verdict == ch.want {
			out.Settled++
		}
	}
	slices.SortFunc(pending, func(a, b *check) int { return strings.Compare(a.job.Key(), b.job.Key()) })
	for _, ch := range pending {
		j := ch.job
		out.Mismatches = append(out.Mismatches, Mismatch{
			Case: caseName, Step: step,
			Probe:  fmt.Sprintf("%s -> %s %d/%s (%s)", j.FromKey, j.ToKey, j.ResolvedPort, j.Protocol, j.ResolvedPortName),
			Oracle: ch.want, Twill: ch.got.Verdict, Detail: ch.got.Detail,
		})
	}
}
