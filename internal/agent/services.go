package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/service"
)

const (
	// serviceBatchWindow is how long the service loop waits after the first pending event
	// before it applies: a rollout or a scale-up changes a slice several times within
	// milliseconds, and one apply of the last state costs less than one apply per event. It
	// is short because an apply is cheap (under a millisecond for one service over netlink,
	// whatever the number of services) and the window counts in every change's programming
	// time; a burst batches anyway, as events arriving during an apply wait for the next.
	serviceBatchWindow = 2 * time.Millisecond
	// serviceRetryMin and serviceRetryMax bound the backoff after a failed apply.
	serviceRetryMin = 500 * time.Millisecond
	serviceRetryMax = 30 * time.Second
)

// errNoServiceDatapath is returned when service load balancing is on but nothing was given to
// program it.
var errNoServiceDatapath = errors.New("services are on (--services) but there is no service datapath")

// serviceProxy feeds the service calculator from the API (every Service and EndpointSlice of
// the cluster: any pod may reach any service) and keeps this node's datapath serving its
// result: the agent's replacement for kube-proxy.
type serviceProxy struct {
	calc *service.Calculator
	dp   datapath.ServiceReconciler
	log  *slog.Logger

	synced  []cache.InformerSynced
	changed chan struct{}
	// programming times each change to the datapath (servicesmetrics.go).
	programming *serviceProgramming
	// factory is the shared factory the informers are on; run starts them.
	factory informers.SharedInformerFactory
	// first times the first full sync after a start (servicestiming.go).
	first firstSyncTimes

	// batch, retryMin and retryMax are the constants above; tests shorten or lengthen them.
	batch              time.Duration
	retryMin, retryMax time.Duration
}

// newServiceProxy registers its informers on the agent's shared factory (started by the
// watcher) and hands every change to dp.
func newServiceProxy(factory informers.SharedInformerFactory, nodeName string, dp datapath.ServiceReconciler, log *slog.Logger) (*serviceProxy, error) {
	if dp == nil {
		return nil, errNoServiceDatapath
	}
	s := &serviceProxy{
		calc: service.NewCalculator(nodeName), dp: dp, log: log.With("part", "services"),
		changed: make(chan struct{}, 1),
		batch:   serviceBatchWindow, retryMin: serviceRetryMin, retryMax: serviceRetryMax,
		programming: newServiceProgramming(), factory: factory,
	}
	handlers := []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandler
	}{
		{factory.Core().V1().Services().Informer(), handler(s.calc.UpsertService,
			func(o *corev1.Service) { s.calc.DeleteService(o.Namespace, o.Name) })},
		{factory.Discovery().V1().EndpointSlices().Informer(), handler(s.calc.UpsertEndpointSlice,
			func(o *discoveryv1.EndpointSlice) { s.calc.DeleteEndpointSlice(o.Namespace, o.Name) })},
	}
	for _, x := range handlers {
		reg, err := x.inf.AddEventHandler(s.timed(x.h))
		if err != nil {
			return nil, fmt.Errorf("watching services: %w", err)
		}
		// Synced once our handler, not only the informer's cache, has seen the initial list:
		// the first apply is Full, and a Full missing a service would take it down for a moment.
		s.synced = append(s.synced, reg.HasSynced)
	}
	return s, nil
}

// timed wraps h: the change is timed from before the calculator takes it (the programming
// metric covers the whole path from the informer's delivery to the datapath's
// acknowledgement), and the apply loop is signalled after.
func (s *serviceProxy) timed(h cache.ResourceEventHandler) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { s.programming.changed(); h.OnAdd(o, false); s.kick() },
		UpdateFunc: func(old, o any) { s.programming.changed(); h.OnUpdate(old, o); s.kick() },
		DeleteFunc: func(o any) { s.programming.changed(); h.OnDelete(o); s.kick() },
	}
}

func (s *serviceProxy) kick() {
	s.first.event()
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// run applies the calculator's changes until ctx is done. The first apply, once the caches
// have synced, is Full: it replaces whatever an earlier agent left in the datapath. A failed
// apply leaves the datapath in a state the calculator no longer knows, so the retry, after a
// backoff, is Full too.
func (s *serviceProxy) run(ctx context.Context) error {
	// Started here, not only by the watcher, so that the services' lists do not wait for
	// whatever else the agent prepares first (Start is idempotent).
	s.factory.Start(ctx.Done())
	s.first.started()
	if err := waitSynced(ctx, s.synced); err != nil {
		return fmt.Errorf("service caches did not sync: %w", err)
	}
	synced := time.Now()
	backoff := s.retryMin
	for {
		if !s.calc.Pending() {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-s.changed:
			}
			if err := sleepCtx(ctx, s.batch); err != nil {
				return err
			}
		}
		// The kick of an event already in this flush would only cause an empty flush.
		select {
		case <-s.changed:
		default:
		}
		flushStart := time.Now()
		ch := s.calc.Flush()
		// After the flush: a change arriving between the two is then missed by the metric (its
		// apply is not timed) rather than timed from an apply that did not include it.
		since := s.programming.take()
		if !ch.Full && len(ch.Set) == 0 && len(ch.Removed) == 0 {
			continue // the touched services came back to what the datapath has
		}
		start := time.Now()
		if err := s.dp.ApplyServices(ctx, ch); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			s.programming.failed(since)
			s.calc.RequestFull()
			s.log.Error("applying services failed; retrying with a full apply", "err", err, "retryIn", backoff)
			if err := sleepCtx(ctx, backoff); err != nil {
				return err
			}
			backoff = min(2*backoff, s.retryMax)
			continue
		}
		backoff = s.retryMin
		s.programming.applied(since)
		if ch.Full {
			s.first.report(s.log, len(ch.Set), synced, flushStart, start)
		}
		s.log.Debug("services applied", "full", ch.Full, "set", len(ch.Set), "removed", len(ch.Removed),
			"took", time.Since(start))
	}
}

// syncedPoll is how often waitSynced checks the caches: client-go's WaitForCacheSync checks
// every 100 ms, 50 ms on average added to a restart's first apply for nothing.
const syncedPoll = 2 * time.Millisecond

// waitSynced waits until every one of synced says so, or ctx ends (then its cause).
func waitSynced(ctx context.Context, synced []cache.InformerSynced) error {
	t := time.NewTicker(syncedPoll)
	defer t.Stop()
	for {
		if !slices.ContainsFunc(synced, func(ok cache.InformerSynced) bool { return !ok() }) {
			return nil
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-t.C:
		}
	}
}

// sleepCtx waits d, or less when ctx ends first (then its error).
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
