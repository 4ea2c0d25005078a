package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/twill-net/twill/internal/cniserver"
	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/ipam"
	"github.com/twill-net/twill/internal/kube"
	"github.com/twill-net/twill/internal/metrics"
	"github.com/twill-net/twill/internal/policy"
)

// policyResync re-applies the policy state without an API event, so a table edited by hand
// comes back (the reconciler finds nothing to do when nothing changed).
const policyResync = 30 * time.Second

// policyEnforcer feeds the policy calculator from the API (every pod, namespace, node,
// NetworkPolicy and ClusterNetworkPolicy of the cluster: a policy selects pods anywhere) and
// keeps this node's datapath enforcing its state. It also puts a new pod's policy in force
// before the CNI server answers the pod's ADD (beforeReady).
type policyEnforcer struct {
	nodeName string
	clients  *kube.Clients
	calc     *policy.Calculator
	dp       datapath.PolicyReconciler
	log      *slog.Logger

	pods    corelisters.PodLister
	synced  []cache.InformerSynced
	changed chan struct{}
	applied atomic.Bool
	// cnpSynced turns true once ClusterNetworkPolicies are known: read, or their CRD found
	// absent. Until then a new pod could miss an Admin tier Deny.
	cnpSynced atomic.Bool

	// mu orders calculator updates of pods, so that an informer event and an ADD of the same
	// pod do not interleave between reading cniAddrs and upserting.
	mu sync.Mutex
	// cniAddrs are the addresses this node's CNI server gave its pods, by pod. Until the
	// kubelet reports them in the pod's status (and in a cluster without kubelet status, ever)
	// they are the only place the calculator learns them from; for this node's pods they are
	// also the freshest (a re-created sandbox gets new addresses before the status follows).
	cniAddrs map[datapath.PodRef]cniAddrs
	// applyMu serializes State+ApplyPolicy, so that an older state never overwrites a newer.
	applyMu sync.Mutex
	// addSeq numbers the endpoints ADDs put in the calculator; appliedSeq is the highest whose
	// endpoint is in force. Concurrent ADDs share applies: one that waited while another
	// applied finds its endpoint already in force (a group commit).
	addSeq     atomic.Uint64
	appliedSeq uint64 // guarded by applyMu
	// resetter, when set (--policy-established=reset), cuts established connections a change
	// may no longer allow; guarded by applyMu.
	resetter *conntrackResetter
	// actions holds the action of every Admin and Baseline rule in force, for the verdict
	// metrics (which know rules by Attribution ID only).
	actions atomic.Pointer[map[string]datapath.Action]
}

// ruleActions returns the actions of the rules in force by Attribution ID.
func (p *policyEnforcer) ruleActions() map[string]datapath.Action {
	if m := p.actions.Load(); m != nil {
		return *m
	}
	return nil
}

type cniAddrs struct {
	uid    types.UID
	handle ipam.Handle
	ips    []netip.Addr
}

// seedAddresses fills cniAddrs from the allocations IPAM kept across a restart, so that this
// node's pods keep their addresses in the policy state while their status does not show them.
func (p *policyEnforcer) seedAddresses(allocs []ipam.Allocation) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, al := range allocs {
		o := al.Owner
		if o.PodName == "" {
			continue
		}
		ref := datapath.PodRef{Namespace: o.PodNamespace, Name: o.PodName}
		a := p.cniAddrs[ref]
		if a.handle != o.Handle {
			// Of two sandboxes of one pod, either may be listed first; the newer one's ADD
			// replaces the entry anyway.
			a = cniAddrs{uid: types.UID(o.PodUID), handle: o.Handle}
		}
		a.ips = append(a.ips, al.IP)
		p.cniAddrs[ref] = a
	}
}

// released is told of every attachment whose addresses IPAM took back (DEL, GC, a failed ADD's
// rollback): the pod's addresses leave the policy state, so that the next pod given them is
// not mistaken for this one.
func (p *policyEnforcer) released(h ipam.Handle) {
	p.mu.Lock()
	var gone []datapath.PodRef
	for ref, a := range p.cniAddrs {
		if a.handle == h {
			delete(p.cniAddrs, ref)
			gone = append(gone, ref)
		}
	}
	p.mu.Unlock()
	for _, ref := range gone {
		if pod, err := p.pods.Pods(ref.Namespace).Get(ref.Name); err == nil {
			p.upsertPod(pod)
		} else {
			p.deletePod(ref.Namespace, ref.Name)
		}
	}
	if len(gone) > 0 {
		p.kick()
	}
}

// releaseWatcher is the allocator the CNI server uses: IPAM's, telling the policy enforcer of
// every release.
type releaseWatcher struct {
	ipam.Allocator
	onRelease func(ipam.Handle)
}

func (r releaseWatcher) Release(ctx context.Context, h ipam.Handle) error {
	err := r.Allocator.Release(ctx, h)
	r.onRelease(h)
	return err
}

// newPolicyEnforcer registers its informers on the agent's shared factory (started by the
// watcher) and reads ClusterNetworkPolicies through the dynamic client when their CRD exists.
func newPolicyEnforcer(c *kube.Clients, factory informers.SharedInformerFactory, nodeName string, dp datapath.PolicyReconciler, log *slog.Logger) (*policyEnforcer, error) {
	p := &policyEnforcer{
		nodeName: nodeName, clients: c, calc: policy.NewCalculator(), dp: dp,
		log: log.With("part", "policy"), changed: make(chan struct{}, 1),
		cniAddrs: map[datapath.PodRef]cniAddrs{},
	}
	podInf := factory.Core().V1().Pods()
	p.pods = podInf.Lister()
	handlers := []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandler
	}{
		{podInf.Informer(), handler(p.upsertPod, func(o *corev1.Pod) { p.deletePod(o.Namespace, o.Name) })},
		{factory.Core().V1().Namespaces().Informer(), handler(
			func(o *corev1.Namespace) { p.calc.UpsertNamespace(policy.NamespaceFromObject(o)) },
			func(o *corev1.Namespace) { p.calc.DeleteNamespace(o.Name) })},
		{factory.Core().V1().Nodes().Informer(), handler(
			func(o *corev1.Node) { p.calc.UpsertNode(policy.NodeFromObject(o)) },
			func(o *corev1.Node) { p.calc.DeleteNode(o.Name) })},
		{factory.Networking().V1().NetworkPolicies().Informer(), handler(
			p.calc.UpsertNetworkPolicy,
			func(o *networkingv1.NetworkPolicy) { p.calc.DeleteNetworkPolicy(o.Namespace, o.Name) })},
	}
	for _, x := range handlers {
		if _, err := x.inf.AddEventHandler(withKick(x.h, p.kick)); err != nil {
			return nil, err
		}
		p.synced = append(p.synced, x.inf.HasSynced)
	}
	return p, nil
}

// handler adapts typed upsert/delete functions to informer events, unwrapping the tombstones
// of deletes the informer missed.
func handler[T any](upsert func(T), del func(T)) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { call(upsert, o) },
		UpdateFunc: func(_, o any) { call(upsert, o) },
		DeleteFunc: func(o any) {
			if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = t.Obj
			}
			call(del, o)
		},
	}
}

func call[T any](f func(T), o any) {
	if t, ok := o.(T); ok {
		f(t)
	}
}

// withKick runs h, then signals the apply loop.
func withKick(h cache.ResourceEventHandler, kick func()) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { h.OnAdd(o, false); kick() },
		UpdateFunc: func(old, o any) { h.OnUpdate(old, o); kick() },
		DeleteFunc: func(o any) { h.OnDelete(o); kick() },
	}
}

func (p *policyEnforcer) kick() {
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

// upsertPod feeds one pod to the calculator. Pods that have finished hold no address any more
// (NetworkPolicy ignores them), and host-network pods are not policed as pods.
func (p *policyEnforcer) upsertPod(pod *corev1.Pod) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := policy.EndpointFromPod(pod)
	if !ok || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		p.forgetLocked(pod.Namespace, pod.Name)
		return
	}
	ref := e.Ref()
	if a, ok := p.cniAddrs[ref]; ok {
		if a.uid == pod.UID && pod.Spec.NodeName == p.nodeName {
			e.IPs = a.ips
		} else {
			delete(p.cniAddrs, ref) // a new pod of the same name
		}
	}
	p.calc.UpsertEndpoint(e)
}

func (p *policyEnforcer) deletePod(namespace, name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.forgetLocked(namespace, name)
}

func (p *policyEnforcer) forgetLocked(namespace, name string) {
	delete(p.cniAddrs, datapath.PodRef{Namespace: namespace, Name: name})
	p.calc.DeleteEndpoint(namespace, name)
}

// beforeReady is the CNI server's hook: it adds the new endpoint, with the addresses just
// given and the pod's labels, to the calculator and applies the state, so the ADD answers only
// once the pod's first packet is policed. Without it the calculator would learn the addresses
// only when the kubelet reports them, after the pod has started.
func (p *policyEnforcer) beforeReady(ctx context.Context, ep cniserver.Endpoint) error {
	pod, err := p.podForEndpoint(ctx, ep)
	if err != nil {
		return err
	}
	ref := datapath.PodRef{Namespace: ep.PodNamespace, Name: ep.PodName}
	p.mu.Lock()
	p.cniAddrs[ref] = cniAddrs{uid: pod.UID, handle: ipam.Handle{ContainerID: ep.ContainerID, IfName: ep.IfName},
		ips: slices.Clone(ep.IPs)}
	e, _ := policy.EndpointFromPod(pod)
	e.Namespace, e.Name, e.Node, e.IPs = ep.PodNamespace, ep.PodName, p.nodeName, slices.Clone(ep.IPs)
	p.calc.UpsertEndpoint(e)
	seq := p.addSeq.Add(1)
	p.mu.Unlock()
	// On failure the ADD rolls back and releases the addresses, which takes them out of the
	// calculator again (released).
	return p.applyThrough(ctx, seq)
}

// podForEndpoint returns the pod of an ADD: from the cache, or from the API when the cache has
// not seen it yet (the ADD can come moments after the pod was created). A pod the API does not
// know (a runtime used without Kubernetes) is policed with its namespace and no labels.
func (p *policyEnforcer) podForEndpoint(ctx context.Context, ep cniserver.Endpoint) (*corev1.Pod, error) {
	pod, err := p.pods.Pods(ep.PodNamespace).Get(ep.PodName)
	if err == nil && (ep.PodUID == "" || string(pod.UID) == ep.PodUID) {
		return pod, nil
	}
	pod, err = p.clients.Kube.CoreV1().Pods(ep.PodNamespace).Get(ctx, ep.PodName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		p.log.Warn("ADD of a pod the API does not know: policing it with no labels", "pod", ep.PodNamespace+"/"+ep.PodName)
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ep.PodNamespace, Name: ep.PodName, UID: types.UID(ep.PodUID)}}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read pod %s/%s for its labels: %w", ep.PodNamespace, ep.PodName, err)
	}
	return pod, nil
}

// apply hands the calculator's current state to the datapath.
func (p *policyEnforcer) apply(ctx context.Context) error { return p.applyThrough(ctx, 0) }

// applyThrough makes sure the endpoint of ADD number seq is in force, applying the current
// state unless an apply since that ADD already did (seq 0: apply anyway).
func (p *policyEnforcer) applyThrough(ctx context.Context, seq uint64) error {
	p.applyMu.Lock()
	defer p.applyMu.Unlock()
	if seq != 0 && p.appliedSeq >= seq {
		return nil
	}
	// Read before the state: every ADD numbered up to here has its endpoint in the calculator.
	through := p.addSeq.Load()
	s := p.calc.State()
	if err := p.dp.ApplyPolicy(ctx, &s); err != nil {
		return fmt.Errorf("apply network policy: %w", err)
	}
	p.appliedSeq = through
	p.applied.Store(true)
	actions := metrics.RuleActions(&s)
	p.actions.Store(&actions)
	if p.resetter != nil {
		if n, err := p.resetter.reset(&s); err != nil {
			p.log.Warn("resetting established connections after a policy change failed", "err", err)
		} else if n > 0 {
			p.log.Info("reset established connections after a policy change", "entries", n)
		}
	}
	return nil
}

// ready says whether the policy state has been in force at least once since the start.
func (p *policyEnforcer) ready() error {
	if !p.applied.Load() {
		return errors.New("network policy is not in force yet")
	}
	if !p.cnpSynced.Load() {
		return errors.New("ClusterNetworkPolicies are not read yet")
	}
	return nil
}

// run applies the state on every change (a burst of events becomes one apply), retries a
// failed apply after a second and re-applies every policyResync.
func (p *policyEnforcer) run(ctx context.Context) error {
	go p.watchClusterNetworkPolicies(ctx)
	retry := time.NewTimer(0)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.changed:
		case <-retry.C:
		}
		if err := p.apply(ctx); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			p.log.Error("applying network policy failed; retrying", "err", err)
			retry.Reset(time.Second)
			continue
		}
		p.log.Debug("network policy applied")
		retry.Reset(policyResync)
	}
}
