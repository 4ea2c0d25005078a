package agent

import (
	"context"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/twill-net/twill/internal/cniserver"
	"github.com/twill-net/twill/internal/ipam"
	"github.com/twill-net/twill/internal/kube"
)

// reconcileLoop reclaims what crashes and lost DELs leave behind, at start and then every
// ReconcileInterval:
//   - addresses of pods that no longer exist (a DEL that never came): the pod is gone from the
//     API, so its sandbox is gone too;
//   - blocks of nodes that were deleted, possibly while this agent was down.
func (a *Agent) reconcileLoop(ctx context.Context, c *kube.Clients, w *watcher, alloc *ipam.NodeAllocator, cni *cniserver.Server, store ipam.BlockStore) error {
	tick := time.NewTicker(a.cfg.ReconcileInterval)
	defer tick.Stop()
	for {
		a.reclaimLeakedAddresses(ctx, c, w, alloc, cni)
		if live, err := w.liveNodes(); err == nil {
			released, err := ipam.ReleaseOrphanBlocks(ctx, store, live)
			if err != nil {
				a.log.Warn("releasing blocks of deleted nodes", "err", err)
			}
			for _, b := range released {
				a.log.Info("released block of deleted node", "block", b.CIDR, "node", b.Node)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// reclaimLeakedAddresses releases allocations whose pod the API no longer has. The informer's
// cache only nominates candidates: each is confirmed with a live read, because a pod that was
// just bound to this node may reach the CNI before it reaches our cache.
func (a *Agent) reclaimLeakedAddresses(ctx context.Context, c *kube.Clients, w *watcher, alloc *ipam.NodeAllocator, cni *cniserver.Server) {
	for _, al := range alloc.Allocations() {
		o := al.Owner
		if o.PodName == "" {
			continue // not a Kubernetes pod: only CNI GC can tell whether it is still in use
		}
		if p, err := w.pods.Pods(o.PodNamespace).Get(o.PodName); err == nil && (o.PodUID == "" || string(p.UID) == o.PodUID) {
			continue
		}
		p, err := c.Kube.CoreV1().Pods(o.PodNamespace).Get(ctx, o.PodName, metav1.GetOptions{})
		switch {
		case err == nil && (o.PodUID == "" || string(p.UID) == o.PodUID):
			continue
		case err != nil && !apierrors.IsNotFound(err):
			a.log.Warn("checking pod of an allocation", "pod", o.PodNamespace+"/"+o.PodName, "err", err)
			continue
		}
		if err := cni.DeleteEndpoint(ctx, o.Handle); err != nil {
			a.log.Warn("reclaiming leaked address", "ip", al.IP, "err", err)
			continue
		}
		a.log.Info("reclaimed address of a pod that no longer exists", "ip", al.IP,
			"pod", o.PodNamespace+"/"+o.PodName, "container", o.ContainerID)
	}
}
