package agent

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// The first full sync is logged once, at info, with its total since the process started
// and its phases, as an operator reads it after a restart.
func TestFirstSyncIsLoggedOnceWithItsPhases(t *testing.T) {
	start := processStart()
	if start.IsZero() || time.Since(start) <= 0 || time.Since(start) > time.Hour {
		t.Fatalf("process start %v: want a moment within the last hour", start)
	}
	var out bytes.Buffer
	log := slog.New(slog.NewTextHandler(&out, nil))
	var f firstSyncTimes
	f.started()
	f.event()
	f.event()
	now := time.Now()
	f.report(log, 2, now, now, now)
	f.event() // after the first sync: not counted
	f.report(log, 3, now, now, now)
	got := out.String()
	if n := strings.Count(got, "first full sync"); n != 1 {
		t.Fatalf("logged %d first syncs, want 1:\n%s", n, got)
	}
	for _, want := range []string{"level=INFO", "first full sync of 2 services programmed in ", "(cache sync ", "calculate ", "apply ", "events=2", "informersStartedAt="} {
		if !strings.Contains(got, want) {
			t.Errorf("log line lacks %q:\n%s", want, got)
		}
	}
}
