package agent

import (
	"context"
	"net/netip"
	"slices"

	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/datapath/nftdp"
	"github.com/twill-net/twill/internal/flow"
	"github.com/twill-net/twill/internal/metrics"
)

// newDropEvents makes the receiver of the policy datapath's drop log: it runs in the agent's
// network namespace (the node's), attributes drops through the table in force and names the
// local pods by the addresses this node gave them.
func (a *Agent) newDropEvents(nft *nftdp.Reconciler) (*flow.Hub, *flow.Receiver, error) {
	hub := flow.NewHub(flow.DefaultRecent)
	r, err := flow.NewReceiver(flow.ReceiverConfig{
		Group:     nftdp.DropLogGroup,
		Attribute: nft.DropAttribution,
		Pods:      a.policy.podAt,
		Hub:       hub,
		Log:       a.log,
	})
	return hub, r, err
}

// runDropEvents runs the receiver; drop events are an aid, not enforcement, so failing to
// receive them (another process holds the nflog group) is logged and the agent goes on.
func (a *Agent) runDropEvents(ctx context.Context, r *flow.Receiver) error {
	if err := r.Run(ctx); err != nil && ctx.Err() == nil {
		a.log.Warn("drop events are off: policy drops are counted but not reported one by one", "error", err)
	}
	return nil
}

// dropRoutes serves the recent drop events beside the metrics.
func dropRoutes(hub *flow.Hub) []metrics.Route {
	if hub == nil {
		return nil
	}
	return []metrics.Route{{Path: flow.DropsPath, Handler: flow.Handler(hub)}}
}

// podAt names the local pod that has addr, from the addresses this node's CNI server gave
// its pods (a node holds at most a few hundred: a scan is cheap next to a rate-limited log).
func (p *policyEnforcer) podAt(addr netip.Addr) (datapath.PodRef, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for ref, a := range p.cniAddrs {
		if slices.Contains(a.ips, addr) {
			return ref, true
		}
	}
	return datapath.PodRef{}, false
}
