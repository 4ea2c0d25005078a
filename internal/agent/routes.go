package agent

import (
	"context"
	"net/netip"
	"time"

	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/routing"
)

// routeResync re-applies the routes even without an API event, so a route, FDB or neighbour
// entry removed by hand (or by another program) comes back.
const routeResync = 30 * time.Second

// routeLoop recomputes this node's routes whenever nodes or blocks change and hands them to the
// reconciler. A failed apply is retried after a second; the reconciler is idempotent.
func (a *Agent) routeLoop(ctx context.Context, w *watcher, dp datapath.RouteReconciler, underlay routing.Underlay, nodeIP netip.Addr) error {
	retry := time.NewTimer(0)
	defer retry.Stop()
	var last datapath.RouteState
	applied := false
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-w.changed:
		case <-retry.C:
		}
		local, peers, err := w.routingNodes()
		if err == nil {
			local.IPs = []netip.Addr{nodeIP}
			state := routing.Compute(local, underlay, peers, a.cfg.Routing)
			if applied && state.Equal(last) {
				retry.Reset(routeResync)
				continue
			}
			if err = dp.ApplyRoutes(ctx, state); err == nil {
				a.log.Info("routes programmed", "peers", len(peers), "routes", len(state.Routes))
				if far := routing.NativeUnreachable(underlay, peers, a.cfg.Routing); len(far) > 0 {
					a.log.Warn("native routing cannot reach these nodes' pods: they are not on this node's subnet (use --routing auto to tunnel to them)",
						"nodes", far)
				}
				last, applied = state, true
				a.routesApplied.Store(true)
				retry.Reset(routeResync)
				continue
			}
		}
		a.log.Error("programming routes failed; retrying", "err", err)
		retry.Reset(time.Second)
	}
}
