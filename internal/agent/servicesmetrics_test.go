package agent

import (
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

func histogramOf(t *testing.T, p *serviceProgramming) (count uint64, sum float64) {
	t.Helper()
	var m dto.Metric
	if err := p.hist.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
}

// A change is timed from its first event to the end of the apply that included it, once;
// events during an apply count for the next one; a failed apply hands its change to the retry.
func TestServiceProgrammingTimesEachChangeOnce(t *testing.T) {
	p := newServiceProgramming()
	p.changed()
	time.Sleep(20 * time.Millisecond)
	p.changed() // same batch: still timed from the first
	since := p.take()
	p.applied(since)
	if n, sum := histogramOf(t, p); n != 1 || sum < 0.02 {
		t.Fatalf("after one apply: %d observations, sum %v s; want 1 of at least 20 ms", n, sum)
	}
	if since := p.take(); !since.IsZero() {
		t.Errorf("an apply with no change since the last is timed from %v", since)
	}
	p.changed()
	since = p.take()
	p.failed(since)
	if again := p.take(); !again.Equal(since) {
		t.Errorf("after a failed apply the retry is timed from %v, want %v", again, since)
	}
	var nilP *serviceProgramming
	nilP.changed()
	nilP.applied(nilP.take())
}
