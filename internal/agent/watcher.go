package agent

import (
	"context"
	"net/netip"
	"sort"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/twill-net/twill/api/v1alpha1"
	"github.com/twill-net/twill/internal/kube"
	"github.com/twill-net/twill/internal/routing"
)

// watcher holds the agent's informers (one shared factory for core objects, one dynamic one for
// twill's CRDs) and turns their events into a coalesced "something changed" signal.
type watcher struct {
	nodeName string
	core     informers.SharedInformerFactory
	podsOnly informers.SharedInformerFactory // this node's pods only; nil when core watches all pods
	dyn      dynamicinformer.DynamicSharedInformerFactory

	nodes   corelisters.NodeLister
	pods    corelisters.PodLister
	blocks  cache.GenericLister
	synced  []cache.InformerSynced
	changed chan struct{}
}

// newWatcher builds the informers. allPods: the agent needs every pod anyway (policy), so the
// leak reconcile reads this node's pods from that same cluster-wide informer instead of opening
// a second watch.
func newWatcher(c *kube.Clients, nodeName string, allPods bool) (*watcher, error) {
	const resync = 0 // periodic full re-reads are done by the loops themselves
	w := &watcher{nodeName: nodeName, changed: make(chan struct{}, 1)}
	w.core = informers.NewSharedInformerFactory(c.Kube, resync)
	// Only this node's pods: the agent reconciles its own allocations, and watching every pod of
	// a large cluster from every node would cost the API server for nothing.
	podFactory := w.core
	if !allPods {
		w.podsOnly = informers.NewSharedInformerFactoryWithOptions(c.Kube, resync,
			informers.WithTweakListOptions(func(o *metav1.ListOptions) {
				o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", nodeName).String()
			}))
		podFactory = w.podsOnly
	}
	w.dyn = dynamicinformer.NewDynamicSharedInformerFactory(c.Dynamic, resync)

	nodeInf := w.core.Core().V1().Nodes()
	podInf := podFactory.Core().V1().Pods()
	blockInf := w.dyn.ForResource(v1alpha1.SchemeGroupVersion.WithResource("ipamblocks"))
	w.nodes, w.pods, w.blocks = nodeInf.Lister(), podInf.Lister(), blockInf.Lister()

	kick := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { w.kick() },
		UpdateFunc: func(any, any) { w.kick() },
		DeleteFunc: func(any) { w.kick() },
	}
	for _, inf := range []cache.SharedIndexInformer{nodeInf.Informer(), blockInf.Informer()} {
		if _, err := inf.AddEventHandler(kick); err != nil {
			return nil, err
		}
		w.synced = append(w.synced, inf.HasSynced)
	}
	w.synced = append(w.synced, podInf.Informer().HasSynced)
	return w, nil
}

func (w *watcher) run(ctx context.Context) error {
	w.core.Start(ctx.Done())
	if w.podsOnly != nil {
		w.podsOnly.Start(ctx.Done())
	}
	w.dyn.Start(ctx.Done())
	<-ctx.Done()
	w.core.Shutdown()
	if w.podsOnly != nil {
		w.podsOnly.Shutdown()
	}
	w.dyn.Shutdown()
	return ctx.Err()
}

func (w *watcher) waitForSync(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), w.synced...)
}

// kick signals a change without blocking; many events in a burst become one recomputation.
func (w *watcher) kick() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// routingNodes returns this node and its peers as the routing calculator sees them: addresses
// from the Node objects, blocks from the IPAMBlocks.
func (w *watcher) routingNodes() (local routing.Node, peers []routing.Node, err error) {
	nodes, err := w.nodes.List(labels.Everything())
	if err != nil {
		return local, nil, err
	}
	blocks, err := w.blocks.List(labels.Everything())
	if err != nil {
		return local, nil, err
	}
	byNode := map[string][]netip.Prefix{}
	for _, obj := range blocks {
		b, ok := toBlock(obj)
		if !ok {
			continue
		}
		p, err := netip.ParsePrefix(b.Spec.CIDR)
		if err != nil {
			continue
		}
		byNode[b.Spec.Node] = append(byNode[b.Spec.Node], p)
	}
	for _, n := range nodes {
		rn := routing.Node{Name: n.Name, IPs: nodeAddresses(n), Blocks: byNode[n.Name]}
		if n.Name == w.nodeName {
			local = rn
			continue
		}
		peers = append(peers, rn)
	}
	sort.Slice(peers, func(i, j int) bool { return peers[i].Name < peers[j].Name })
	return local, peers, nil
}

// liveNodes is the set of node names the API has now.
func (w *watcher) liveNodes() (map[string]bool, error) {
	nodes, err := w.nodes.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	live := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		live[n.Name] = true
	}
	return live, nil
}

func toBlock(obj runtime.Object) (*v1alpha1.IPAMBlock, bool) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return nil, false
	}
	var b v1alpha1.IPAMBlock
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &b); err != nil {
		return nil, false
	}
	return &b, true
}

// nodeAddresses returns a node's InternalIPs, IPv4 first, as the addresses other nodes reach it on.
func nodeAddresses(n *corev1.Node) []netip.Addr {
	var v4, v6 []netip.Addr
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil {
			continue
		}
		if ip.Is4() {
			v4 = append(v4, ip)
		} else {
			v6 = append(v6, ip)
		}
	}
	return append(v4, v6...)
}
