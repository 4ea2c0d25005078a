package nftsvc

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"

	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"

	"github.com/twill-net/twill/internal/datapath"
)

// Reconciler keeps the services table serving the services it was given. It is safe for
// concurrent use; applies are serialized.
type Reconciler struct {
	w   writer
	log *slog.Logger

	mu sync.Mutex
	// services are the objects of every service served (or to be served), by key.
	services map[datapath.ServiceKey]*objects
	// inSync says the table holds exactly services; false before the first apply and after
	// a refused transaction, so that the next apply rebuilds the table whole.
	inSync bool
	flat   flatState
	claims claims
	stats  Stats
}

// Stats counts applies by kind, for metrics and tests.
type Stats struct {
	Updates   int // incremental transactions run
	Rebuilds  int // whole-table transactions run
	Unchanged int // applies that found nothing to change
	Failures  int // transactions the kernel refused
}

var _ datapath.ServiceReconciler = (*Reconciler)(nil)

// New returns a reconciler that writes through nft, which must be bound to TableFamily and
// TableName (knftables.NewFake(TableFamily, TableName) in tests). The agent uses NewKernel.
func New(nft knftables.Interface, log *slog.Logger) *Reconciler {
	return newReconciler(knftWriter{nft: nft}, log)
}

// NewKernel returns a reconciler writing over netlink to the kernel of the network namespace
// the calling thread is in when NewKernel is called.
func NewKernel(log *slog.Logger) (*Reconciler, error) {
	fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the network namespace: %w", err)
	}
	// The descriptor stays open for the reconciler's life: every transaction opens its
	// socket in that namespace, whichever thread runs it.
	return newReconciler(newNetlinkWriter(fd), log), nil
}

func newReconciler(w writer, log *slog.Logger) *Reconciler {
	if log == nil {
		log = slog.Default()
	}
	return &Reconciler{w: w, log: log, services: map[datapath.ServiceKey]*objects{}, flat: newFlatState(),
		claims: newClaims()}
}

// ApplyServices makes the table serve ch. A Full change, the first apply of a process and
// any apply after a refused transaction replace the table whole in one transaction; other
// changes send only the objects of the services they name. Should an update be refused
// (someone edited the table), the table is rebuilt at once.
func (r *Reconciler) ApplyServices(ctx context.Context, ch datapath.ServiceChanges) error {
	r.mu.Lock()
	defer r.mu.Unlock()

	if ch.Full {
		r.claims = newClaims()
		set := slices.Clone(ch.Set)
		slices.SortFunc(set, func(a, b datapath.Service) int { return compareKeys(a.Key, b.Key) })
		for i := range set {
			r.warnDenied(&set[i], r.claims.take(&set[i]))
		}
		r.services = make(map[datapath.ServiceKey]*objects, len(set))
		for i := range set {
			r.services[set[i].Key] = renderService(&set[i], r.claims.ownedBy(set[i].Key))
		}
		return r.rebuild(ctx)
	}
	// Claims on external IPs first: what a changed or removed service lets go may go to
	// another service, which is then rendered again too.
	var freed []claimedFrontend
	for _, k := range ch.Removed {
		if !slices.ContainsFunc(ch.Set, func(s datapath.Service) bool { return s.Key == k }) {
			freed = append(freed, r.claims.release(k)...)
		}
	}
	for i := range ch.Set {
		freed = append(freed, r.claims.release(ch.Set[i].Key)...)
	}
	given := slices.Clone(ch.Set)
	slices.SortFunc(given, func(a, b datapath.Service) int { return compareKeys(a.Key, b.Key) })
	for i := range given {
		r.warnDenied(&given[i], r.claims.take(&given[i]))
	}
	rendered := make(map[datapath.ServiceKey]*objects, len(given))
	for i := range given {
		rendered[given[i].Key] = renderService(&given[i], r.claims.ownedBy(given[i].Key))
	}
	for _, k := range r.claims.handOver(freed) {
		if _, again := rendered[k]; !again {
			rendered[k] = renderService(r.claims.specs[k], r.claims.ownedBy(k))
		}
	}
	var changes []change
	for _, k := range ch.Removed {
		if _, set := rendered[k]; set {
			continue // Set wins over Removed
		}
		if old, ok := r.services[k]; ok {
			changes = append(changes, change{old: old})
			delete(r.services, k)
		}
	}
	for _, k := range slices.SortedFunc(maps.Keys(rendered), compareKeys) {
		changes = append(changes, change{old: r.services[k], new: rendered[k]})
		r.services[k] = rendered[k]
	}
	if !r.inSync {
		return r.rebuild(ctx)
	}
	before, after := r.flat.update(changes)
	ops := append(append(before, updateServices(changes)...), after...)
	if len(ops) == 0 {
		r.stats.Unchanged++
		return nil
	}
	if err := r.w.write(ctx, ops); err != nil {
		r.stats.Failures++
		r.log.Warn("nftables services update refused; rebuilding the table", "table", TableName, "error", err)
		return r.rebuild(ctx)
	}
	r.stats.Updates++
	return nil
}

// rebuild replaces the table by the skeleton and every service in r.services.
func (r *Reconciler) rebuild(ctx context.Context) error {
	r.inSync = false
	services := make([]*objects, 0, len(r.services))
	for _, k := range slices.SortedFunc(maps.Keys(r.services), compareKeys) {
		services = append(services, r.services[k])
	}
	flat, hairpins := r.flat.reset(services)
	if err := r.w.write(ctx, rebuild(skeleton(), services, flat, hairpins)); err != nil {
		r.stats.Failures++
		return fmt.Errorf("rebuild nftables table %s %s: %w", TableFamily, TableName, err)
	}
	r.stats.Rebuilds++
	r.inSync = true
	return nil
}

// warnDenied says which of s's external frontends another service holds.
func (r *Reconciler) warnDenied(s *datapath.Service, denied []claimedFrontend) {
	for _, f := range denied {
		r.log.Warn("external IP already served for another service; not served for this one",
			"service", s.Key, "address", f.addr, "port", f.port, "protocol", protoName(f.proto),
			"servedFor", r.claims.owner[f])
	}
}

// Stats returns the counts of applies so far.
func (r *Reconciler) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

func compareKeys(a, b datapath.ServiceKey) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}
