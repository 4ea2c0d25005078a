package service

import (
	"fmt"
	"math"
	"testing"
	"time"
)

// bigCalculator holds n services of 3 endpoints each, flushed.
func bigCalculator(n int) *Calculator {
	c := bigCalculatorUnflushed(n)
	c.Flush()
	return c
}

// bigCalculatorUnflushed holds n services of 3 endpoints each, not yet flushed.
func bigCalculatorUnflushed(n int) *Calculator {
	c := NewCalculator(thisNode)
	for i := range n {
		name := fmt.Sprintf("svc-%d", i)
		c.UpsertService(clusterIPService(name, []string{fmt.Sprintf("10.%d.%d.%d", 96+i>>16, i>>8&255, i&255)}))
		c.UpsertEndpointSlice(slice(name+"-1", name, v4, nil,
			readyEP(fmt.Sprintf("10.244.%d.%d", i>>8&255, i&255), "n1"),
			readyEP(fmt.Sprintf("10.245.%d.%d", i>>8&255, i&255), "n2"),
			readyEP(fmt.Sprintf("10.246.%d.%d", i>>8&255, i&255), "n3")))
	}
	return c
}

// BenchmarkOneEndpointChangeAmong50000 is the cost of one slice update and the flush that
// hands it out, with 50,000 services known: it must not grow with the number of services.
func BenchmarkOneEndpointChangeAmong50000(b *testing.B) {
	c := bigCalculator(50000)
	ready := slice("svc-777-1", "svc-777", v4, nil, readyEP("10.244.3.9", "n1"), readyEP("10.245.3.9", "n2"))
	notReady := slice("svc-777-1", "svc-777", v4, nil, notReadyEP("10.244.3.9", "n1"), readyEP("10.245.3.9", "n2"))
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if i%2 == 0 {
			c.UpsertEndpointSlice(ready)
		} else {
			c.UpsertEndpointSlice(notReady)
		}
		if ch := c.Flush(); len(ch.Set) != 1 {
			b.Fatalf("flush handed out %d services, want 1", len(ch.Set))
		}
	}
}

// TestOneChangeCostDoesNotGrowWithServices compares one change's cost among 500 and among
// 50,000 services; a walk over all services would make the second up to 100 times dearer (a
// map cleared at its full size on every flush already made it 9 times). The best of several
// rounds is compared, with a loose bound: the machine may be loaded.
func TestOneChangeCostDoesNotGrowWithServices(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 50,000 services")
	}
	cost := func(n int) time.Duration {
		c := bigCalculator(n)
		s := slice("svc-7-1", "svc-7", v4, nil, readyEP("10.244.3.9", "n1"))
		best := time.Duration(math.MaxInt64)
		const changes = 500
		for range 5 {
			start := time.Now()
			for i := range changes {
				s.Endpoints[0].Addresses[0] = fmt.Sprintf("10.244.3.%d", i%200)
				c.UpsertEndpointSlice(s)
				c.Flush()
			}
			best = min(best, time.Since(start)/changes)
		}
		return best
	}
	small, big := cost(500), cost(50000)
	t.Logf("one change: %s among 500 services, %s among 50,000 (noisy on a loaded machine)", small, big)
	if big > 5*small {
		t.Errorf("one change among 50,000 services costs %s, %.1f times its cost among 500", big, float64(big)/float64(small))
	}
}

// BenchmarkFirstFlushOf10000 is the calculator's part of an agent restart with 10,000
// services: taking every Service and EndpointSlice, then the first (Full) flush.
func BenchmarkFirstFlushOf10000(b *testing.B) {
	for b.Loop() {
		c := bigCalculatorUnflushed(10000)
		if ch := c.Flush(); !ch.Full || len(ch.Set) != 10000 {
			b.Fatalf("first flush: Full %v with %d services, want Full with 10000", ch.Full, len(ch.Set))
		}
	}
}
