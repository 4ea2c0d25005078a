// Package netlinkdp is the netlink reconciler of node-to-node routing: it makes the current
// network namespace hold exactly the datapath.RouteState the routing calculator wants (the
// VXLAN device, its FDB and neighbour entries, and the routes marked RouteProtocolRemote), and
// touches nothing else: not the pods' routes (RouteProtocolPod), not other links or entries.
package netlinkdp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/vishvananda/netlink"

	"github.com/twill-net/twill/internal/datapath"
)

// Routes applies RouteStates to the network namespace of the calling thread (the host's, for
// the agent). It keeps no copy of the state: every apply compares with what the kernel holds,
// so entries removed by someone else come back on the next apply.
type Routes struct {
	log *slog.Logger

	mu      sync.Mutex
	changes int // kernel changes made so far; a second apply of the same state adds none
}

var _ datapath.RouteReconciler = (*Routes)(nil)

// New returns a reconciler logging its changes to log.
func New(log *slog.Logger) *Routes {
	return &Routes{log: log}
}

// ApplyRoutes makes the kernel match s: it creates or fixes the VXLAN device (or removes it
// when s has none), adds what is missing and removes what twill made earlier but s no longer
// has. It goes on after a failed entry so one bad route does not hold back the others, and
// returns all failures joined.
func (r *Routes) ApplyRoutes(ctx context.Context, s datapath.RouteState) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()

	var errs []error
	vxlan, err := r.syncVXLAN(s.VXLAN)
	if err != nil {
		errs = append(errs, err)
	}
	if vxlan != nil {
		// Tunnel entries before routes, so the first packet routed into the tunnel finds them.
		errs = append(errs, r.syncFDB(vxlan, s.FDB), r.syncNeighbors(vxlan, s.Neighbors))
	}
	errs = append(errs, r.syncRoutes(s.Routes))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("applying routes: %w", err)
	}
	return nil
}

// Cleanup removes everything twill's routing made in this namespace: the VXLAN device (its FDB
// and neighbour entries and routes go with it) and every route marked RouteProtocolRemote.
func (r *Routes) Cleanup() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	if err := r.deleteVXLAN(); err != nil {
		errs = append(errs, err)
	}
	if err := r.syncRoutes(nil); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// changed records one kernel change and logs it.
func (r *Routes) changed(what string, args ...any) {
	r.changes++
	r.log.Info(what, args...)
}

// Changes is how many kernel changes this reconciler has made; a caller (or a test) sees an
// apply that changed nothing as an unchanged count.
func (r *Routes) Changes() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changes
}

func linkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}
