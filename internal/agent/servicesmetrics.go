package agent

import (
	"math"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// serviceProgrammingMetric is the agent's counterpart of kube-proxy's
// kubeproxy_network_programming_duration_seconds: how long a Service or EndpointSlice change
// took to be in the datapath, from the moment the agent's informer delivered it (the first
// change an apply includes) to the end of that apply, batching window included. The first
// apply after a start is the full sync of every service.
const serviceProgrammingMetric = "twill_services_programming_seconds"

// serviceProgramming times the service loop's changes; a nil one times nothing.
type serviceProgramming struct {
	hist prometheus.Histogram

	mu sync.Mutex
	// firstChange is when the oldest change not yet taken by an apply arrived (zero: none).
	firstChange time.Time
}

func newServiceProgramming() *serviceProgramming {
	return &serviceProgramming{hist: prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: serviceProgrammingMetric,
		Help: "Time from a Service or EndpointSlice change reaching the agent to the service datapath holding it (the batching window included).",
		// 0.5 ms to about 65 s, a factor of √2 apart: a change applied at once (a few
		// milliseconds, whose p99 the buckets must tell apart from the 10 ms target) to a full
		// sync of tens of thousands.
		Buckets: prometheus.ExponentialBuckets(0.0005, math.Sqrt2, 35),
	})}
}

// changed notes a change (called on every informer event).
func (p *serviceProgramming) changed() {
	if p == nil {
		return
	}
	p.mu.Lock()
	if p.firstChange.IsZero() {
		p.firstChange = time.Now()
	}
	p.mu.Unlock()
}

// take returns the time of the oldest pending change and forgets it: the apply about to run
// includes it. Changes arriving meanwhile count for the next apply.
func (p *serviceProgramming) take() time.Time {
	if p == nil {
		return time.Time{}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.firstChange
	p.firstChange = time.Time{}
	return t
}

// failed gives a change back after a failed apply: the retry is what programs it.
func (p *serviceProgramming) failed(since time.Time) {
	if p == nil || since.IsZero() {
		return
	}
	p.mu.Lock()
	if p.firstChange.IsZero() || since.Before(p.firstChange) {
		p.firstChange = since
	}
	p.mu.Unlock()
}

// applied records an apply that included changes since since.
func (p *serviceProgramming) applied(since time.Time) {
	if p == nil || since.IsZero() {
		return
	}
	p.hist.Observe(time.Since(since).Seconds())
}
