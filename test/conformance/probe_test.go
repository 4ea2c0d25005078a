package conformance

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/twill-net/twill/internal/netcheck"
)

// A batch's lines come back to their probes with the verdicts a single probe gives: answered
// is allowed; timed out, refused and unreachable are blocked; anything else failed.
func TestBatchLinesMapBackToTheirProbes(t *testing.T) {
	targets := []netcheck.Target{
		{Protocol: "tcp", Addr: "10.0.0.2:80"},
		{Protocol: "udp", Addr: "10.0.0.2:81"},
		{Protocol: "tcp", Addr: "10.0.0.3:80"},
		{Protocol: "udp", Addr: "10.0.0.3:80"},
		{Protocol: "tcp", Addr: "10.0.0.4:81"},
	}
	outcomes := []netcheck.Outcome{netcheck.Connected, netcheck.TimedOut, netcheck.Refused, netcheck.Unreachable, netcheck.Failed}
	var stdout strings.Builder
	for i, tg := range targets {
		fmt.Fprintln(&stdout, netcheck.Result{Target: tg, Outcome: outcomes[i], Detail: "unexpected reply \"hello\""})
	}
	got := batchResults(targets, stdout.String(), "", 0, nil)
	want := []ProbeResult{{Allowed, "answered"}, {Blocked, "timed out"}, {Blocked, "refused"}, {Blocked, "unreachable"},
		{Failed, "unexpected reply \"hello\""}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("results %v, want %v", got, want)
	}
}

// What cannot be read fails the probes it concerns; it never passes one.
func TestUnreadableBatchesFailTheirProbes(t *testing.T) {
	targets := []netcheck.Target{{Protocol: "tcp", Addr: "10.0.0.2:80"}, {Protocol: "tcp", Addr: "10.0.0.3:80"}}
	line := func(tg netcheck.Target) string {
		return netcheck.Result{Target: tg, Outcome: netcheck.Connected, Detail: "pod=b client=10.0.0.1:4000"}.String() + "\n"
	}
	for _, tc := range []struct {
		name           string
		stdout, stderr string
		code           int
		err            error
		want           []Verdict
	}{
		{"exec failed", "", "", -1, errors.New("exec in x/a: pod not found"), []Verdict{Failed, Failed}},
		{"bad arguments", "", "unknown flag --parallel", 1, nil, []Verdict{Failed, Failed}},
		{"a line missing", line(targets[0]), "", 0, nil, []Verdict{Allowed, Failed}},
		{"lines swapped", line(targets[1]) + line(targets[0]), "", 0, nil, []Verdict{Failed, Failed}},
		{"garbage after a line", line(targets[0]) + "panic: oops\n", "", 0, nil, []Verdict{Allowed, Failed}},
	} {
		got := batchResults(targets, tc.stdout, tc.stderr, tc.code, tc.err)
		for i, r := range got {
			if r.Verdict != tc.want[i] {
				t.Errorf("%s: probe %d: %s (%s), want %s", tc.name, i, r.Verdict, r.Detail, tc.want[i])
			}
			if r.Verdict == Failed && r.Detail == "" {
				t.Errorf("%s: probe %d failed without saying why", tc.name, i)
			}
		}
	}
}
