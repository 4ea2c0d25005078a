package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"syscall"
	"time"

	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/datapath/nftdp"
	"github.com/twill-net/twill/internal/policy"
)

// The policy suite measures how long a change takes to be enforced: from the moment a pod,
// label or NetworkPolicy change enters the policy calculator to the moment the nftables
// transaction that enforces it has returned, through the code path the agent runs (calculator
// update, Calculator.State, nftdp.Reconciler.ApplyPolicy, which writes one netlink
// transaction in this process). The table lives in
// a network namespace of the suite's own ("twb" and a random hex suffix), which it removes.
// Every change is read back from the kernel (untimed), so the figures measure enforcement,
// not a transaction that did nothing. It also reports what the rule set costs: its size in
// the kernel's listing, the kernel memory the table holds, and the Go heap of the calculator
// and the reconciler.

// PolicyOptions configure the policy suite.
type PolicyOptions struct {
	Scale PolicyScale // zero fields take DefaultPolicyScale's
	// Progress receives what the suite is doing (nil: nothing).
	Progress io.Writer
}

func runPolicySuite(ctx context.Context, opts Options) (Report, error) {
	return RunPolicy(ctx, PolicyOptions{Scale: PolicyScale{ChangesPerKind: opts.Iterations}, Progress: opts.Progress})
}

// The kinds of change measured, in the order each round makes them.
const (
	changePodLabel     = "pod_label"
	changePodAdd       = "pod_add"
	changePodDelete    = "pod_delete"
	changePolicyAdd    = "policy_add"
	changePolicyEdit   = "policy_edit"
	changePolicyDelete = "policy_delete"
)

var changeKinds = []string{changePodLabel, changePodAdd, changePodDelete, changePolicyAdd, changePolicyEdit, changePolicyDelete}

var changeWhat = map[string]string{
	changePodLabel:     "a pod's label changes (its identity changes), half on this node",
	changePodAdd:       "a pod is added, half on this node",
	changePodDelete:    "the pod just added is deleted",
	changePolicyAdd:    "a NetworkPolicy is added (an application's ingress from another namespace's)",
	changePolicyEdit:   "that NetworkPolicy gets a second ingress rule",
	changePolicyDelete: "that NetworkPolicy is deleted",
}

// RunPolicy builds the cluster, applies it to a table in a namespace of its own, measures
// every kind of change and removes the namespace.
func RunPolicy(ctx context.Context, opts PolicyOptions) (rep Report, err error) {
	size := withDefaults(opts.Scale)
	progress := opts.Progress
	if progress == nil {
		progress = io.Discard
	}
	netns, err := newBenchNetNS()
	if err != nil {
		return rep, err
	}
	defer func() { err = errors.Join(err, netns.close()) }()

	fmt.Fprintf(progress, "bench policy: %d NetworkPolicies, %d pods on %d nodes, in namespace %s\n",
		size.Namespaces*size.PoliciesPerNS, size.Pods, size.Nodes, netns.name)
	heapBefore := heapInUse()
	w := newPolicyWorld(size)
	calc := policy.NewCalculator()
	start := time.Now()
	w.load(calc)
	loadTime := time.Since(start)

	var r *nftdp.Reconciler
	if err := netns.do(func() (err error) {
		r, err = nftdp.NewKernel(w.localNode, slog.New(slog.DiscardHandler))
		return err
	}); err != nil {
		return rep, err
	}
	b := &policyBench{ctx: ctx, ns: netns, w: w, calc: calc, r: r, samples: map[string][]time.Duration{}}
	fmt.Fprintf(progress, "bench policy: first apply (the whole table)\n")
	start = time.Now()
	if err := b.apply(); err != nil {
		return rep, fmt.Errorf("first apply: %w", err)
	}
	firstApply := time.Since(start)
	heapAfter := heapInUse()

	for i := range size.ChangesPerKind {
		if i%10 == 0 {
			fmt.Fprintf(progress, "bench policy: change round %d/%d\n", i+1, size.ChangesPerKind)
		}
		if err := b.round(i); err != nil {
			return rep, err
		}
	}
	// A refused update is followed by a rebuild of the whole table in the same apply: its
	// time would be a rebuild's, not a change's.
	if st := r.Stats(); st.Failures > 0 || st.Rebuilds != 1 {
		return rep, fmt.Errorf("the datapath refused %d updates and rebuilt the table %d times: the changes were not measured as updates", st.Failures, st.Rebuilds)
	}
	fmt.Fprintf(progress, "bench policy: measuring the rule set\n")
	cost, err := b.ruleSetCost()
	if err != nil {
		return rep, err
	}
	runtime.KeepAlive(calc)
	runtime.KeepAlive(r)
	cond := policyConditions{size: size, localPods: w.localPods(), identities: b.identities, cores: runtime.NumCPU()}
	ms := policyMeasurements(b.samples, cond)
	ms = append(ms, cpuMeasurements(b.goCPU, b.nftCPU, cond)...)
	ms = append(ms, cost.measurements(cond)...)
	ms = append(ms,
		Measurement{Metric: "policy_first_apply", Value: Millis(firstApply), Unit: "ms",
			Conditions: cond.String() + "; State + the whole table in one netlink transaction"},
		Measurement{Metric: "policy_calculator_load", Value: Millis(loadTime), Unit: "ms",
			Conditions: cond.String() + "; every namespace, node, pod and policy fed to a new calculator"},
		Measurement{Metric: "policy_go_heap", Value: float64(heapAfter-heapBefore) / (1 << 20), Unit: "MiB",
			Conditions: cond.String() + "; live Go heap after GC: calculator, generated cluster and the reconciler's applied model"},
	)
	return Report{Suite: "policy", Measurements: ms}, nil
}

func withDefaults(s PolicyScale) PolicyScale {
	d := DefaultPolicyScale
	for _, f := range []struct{ v, def *int }{
		{&s.Namespaces, &d.Namespaces}, {&s.AppsPerNS, &d.AppsPerNS}, {&s.Pods, &d.Pods}, {&s.Nodes, &d.Nodes},
		{&s.PoliciesPerNS, &d.PoliciesPerNS}, {&s.ChangesPerKind, &d.ChangesPerKind}, {&s.EnforcementSpot, &d.EnforcementSpot},
	} {
		if *f.v <= 0 {
			*f.v = *f.def
		}
	}
	return s
}

// heapInUse is the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// policyBench is one run's moving parts.
type policyBench struct {
	ctx  context.Context
	ns   *benchNetNS
	w    *policyWorld
	calc *policy.Calculator
	r    *nftdp.Reconciler
	// last is the state last applied, for the read-back checks.
	last       datapath.PolicyState
	samples    map[string][]time.Duration
	identities int
	// goCPU and nftCPU are the CPU time (user + system) each change took in this process and
	// in child processes (nft, none since the datapath writes over netlink): unlike wall
	// time, they hardly depend on the machine's load.
	goCPU, nftCPU []time.Duration
}

type cpuUsage struct{ self, children time.Duration }

// cpuTimes reads the CPU time of this process and of its waited-for children so far.
func cpuTimes() cpuUsage {
	var self, children syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &children)
	tv := func(r *syscall.Rusage) time.Duration {
		return time.Duration(r.Utime.Nano() + r.Stime.Nano())
	}
	return cpuUsage{self: tv(&self), children: tv(&children)}
}

// apply is what the agent's apply does: the calculator's state, handed to the datapath.
func (b *policyBench) apply() error {
	return b.ns.do(func() error {
		b.last = b.calc.State()
		b.identities = len(b.last.Identities)
		return b.r.ApplyPolicy(b.ctx, &b.last)
	})
}

// timed makes one change (change feeds the calculator), applies it and records the time
// from the change to the end of the transaction, then reads the result back from the kernel.
func (b *policyBench) timed(kind string, round int, change func(), check func() error) error {
	cpuBefore := cpuTimes()
	start := time.Now()
	change()
	if err := b.apply(); err != nil {
		return fmt.Errorf("%s: %w", kind, err)
	}
	b.samples[kind] = append(b.samples[kind], time.Since(start))
	cpuAfter := cpuTimes()
	b.goCPU = append(b.goCPU, cpuAfter.self-cpuBefore.self)
	b.nftCPU = append(b.nftCPU, cpuAfter.children-cpuBefore.children)
	if round%b.w.size.EnforcementSpot != 0 {
		return nil
	}
	if err := check(); err != nil {
		return fmt.Errorf("%s, round %d: not enforced: %w", kind, round, err)
	}
	return nil
}
