package nftdp

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"

	"github.com/twill-net/twill/internal/datapath"
)

// Reconciler keeps twill's nftables table enforcing the latest PolicyState on one node's
// pods. It is safe for concurrent use; applies are serialized.
type Reconciler struct {
	w        writer
	nodeName string
	log      *slog.Logger

	mu sync.Mutex
	// applied is what the table holds since the last successful apply; nil until the first,
	// and after a failure, so that the next apply rebuilds the table whole.
	applied *model
	// cache keeps what renders work out, so an apply's work follows what changed.
	cache *renderCache
	stats Stats
}

// Stats counts applies by kind, for metrics and tests.
type Stats struct {
	Updates   int // incremental transactions run
	Rebuilds  int // whole-table transactions run
	Unchanged int // applies that found nothing to change
	Failures  int // transactions the kernel refused
}

var (
	_ datapath.PolicyReconciler    = (*Reconciler)(nil)
	_ datapath.PolicyCounterReader = (*Reconciler)(nil)
)

// New returns a reconciler for the node named nodeName that writes through nft, which must
// be bound to TableFamily and TableName (knftables.NewFake(TableFamily, TableName) in tests).
// The node name picks the local pods out of a state: those whose endpoint's Node is it. The
// agent uses NewKernel.
func New(nft knftables.Interface, nodeName string, log *slog.Logger) *Reconciler {
	return newReconciler(knftWriter{nft: nft}, nodeName, log)
}

// NewKernel returns a reconciler writing over netlink to the kernel of the network namespace
// the calling thread is in when NewKernel is called.
func NewKernel(nodeName string, log *slog.Logger) (*Reconciler, error) {
	fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the network namespace: %w", err)
	}
	// The descriptor stays open for the reconciler's life: every transaction opens its
	// socket in that namespace, whichever thread runs it.
	return newReconciler(newNetlinkWriter(fd), nodeName, log), nil
}

func newReconciler(w writer, nodeName string, log *slog.Logger) *Reconciler {
	if log == nil {
		log = slog.Default()
	}
	return &Reconciler{w: w, nodeName: nodeName, log: log, cache: newRenderCache()}
}

// ApplyPolicy makes the table enforce s. The first apply (and any after a failure) replaces
// the table whole, in one transaction; later ones send only what changed since the previous
// apply, also in one transaction. Should an update be refused (someone edited the table), the
// table is rebuilt at once.
func (r *Reconciler) ApplyPolicy(ctx context.Context, s *datapath.PolicyState) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	want := render(s, r.nodeName, r.cache)
	if r.applied != nil {
		if ops, ok := want.update(r.applied); ok {
			if len(ops) == 0 {
				r.stats.Unchanged++
				r.applied = want // the same content; the next render derives from its sets
				return nil
			}
			err := r.w.write(ctx, ops)
			if err == nil {
				r.stats.Updates++
				r.applied = want
				return nil
			}
			r.stats.Failures++
			r.log.Warn("nftables policy update refused; rebuilding the table", "table", TableName, "error", err)
		}
		r.applied = nil
	}
	if err := r.w.write(ctx, want.rebuild()); err != nil {
		r.stats.Failures++
		return fmt.Errorf("rebuild nftables table %s %s: %w", TableFamily, TableName, err)
	}
	r.stats.Rebuilds++
	r.applied = want
	return nil
}

// Stats returns the counts of applies so far.
func (r *Reconciler) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

// PolicyCounters reads the table's counters, keyed as datapath.PolicyCounterReader says.
// Counters start from zero when the table is rebuilt (first apply after a start).
func (r *Reconciler) PolicyCounters(ctx context.Context) (map[string]datapath.PolicyCounter, error) {
	r.mu.Lock()
	var keys map[string]string
	if r.applied != nil {
		keys = r.applied.counters
	}
	r.mu.Unlock()
	counters, err := r.w.counters(ctx)
	if err != nil {
		return nil, fmt.Errorf("list counters of nftables table %s: %w", TableName, err)
	}
	out := make(map[string]datapath.PolicyCounter, len(counters))
	for name, c := range counters {
		if key, ok := keys[name]; ok {
			out[key] = datapath.PolicyCounter{Packets: c.packets, Bytes: c.bytes}
		}
	}
	return out, nil
}
