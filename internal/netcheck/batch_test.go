package netcheck

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twill-net/twill/internal/testutil"
)

func TestTargetsParseAndPrint(t *testing.T) {
	for _, s := range []string{"tcp:10.244.1.5:80", "udp:[fd00::5]:81", "http:127.0.0.1:8080"} {
		tg, err := ParseTarget(s)
		if err != nil {
			t.Errorf("ParseTarget(%q): %v", s, err)
			continue
		}
		if tg.String() != s {
			t.Errorf("ParseTarget(%q).String() = %q", s, tg.String())
		}
	}
	if tg, _ := ParseTarget("udp:[fd00::5]:81"); tg.Protocol != UDP || tg.Addr != "[fd00::5]:81" {
		t.Errorf("udp:[fd00::5]:81 parsed as %+v", tg)
	}
	for _, bad := range []string{"", "tcp", "10.0.0.1:80", "sctp:10.0.0.1:80", "tcp:10.0.0.1", "tcp::80", "tcp:fd00::5:80"} {
		if tg, err := ParseTarget(bad); err == nil {
			t.Errorf("ParseTarget(%q) accepted it: %+v", bad, tg)
		}
	}
}

func TestResultLinesRoundTrip(t *testing.T) {
	results := []Result{
		{Target: Target{TCP, "10.0.0.1:80"}, Outcome: Connected, Detail: "pod=b client=10.0.0.2:40000"},
		{Target: Target{UDP, "[fd00::1]:81"}, Outcome: Refused, Detail: "udp [fd00::1]:81: connection refused"},
		{Target: Target{TCP, "10.0.0.3:80"}, Outcome: TimedOut, Detail: "tcp 10.0.0.3:80: timed out"},
		{Target: Target{TCP, "10.0.0.4:80"}, Outcome: Unreachable},
		{Target: Target{HTTP, "10.0.0.5:8080"}, Outcome: Failed, Detail: "HTTP status 500"},
	}
	var out bytes.Buffer
	for _, r := range results {
		fmt.Fprintln(&out, r)
	}
	got, err := ReadResults(&out)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(results) {
		t.Fatalf("read %d results, printed %d", len(got), len(results))
	}
	for i := range results {
		if got[i] != results[i] {
			t.Errorf("line %d: read %+v, printed %+v", i, got[i], results[i])
		}
	}
	// A detail spread over lines stays on one: one line per target, always.
	r := Result{Target: Target{TCP, "10.0.0.1:80"}, Outcome: Failed, Detail: "first\nsecond"}
	if s := r.String(); strings.Contains(s, "\n") || !strings.HasSuffix(s, "error first second") {
		t.Errorf("a two-line detail printed as %q", s)
	}
	for _, bad := range []string{"hello", "tcp:10.0.0.1:80", "tcp:10.0.0.1:80 maybe", "x:1:2 connected"} {
		if r, err := ParseResult(bad); err == nil {
			t.Errorf("ParseResult(%q) accepted it: %+v", bad, r)
		}
	}
}

func TestReadTargetsSkipsBlankAndComments(t *testing.T) {
	got, err := ReadTargets(strings.NewReader("# from x/a\ntcp:10.0.0.1:80\n\n  udp:10.0.0.1:81  \n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Target{{TCP, "10.0.0.1:80"}, {UDP, "10.0.0.1:81"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("ReadTargets = %v, want %v", got, want)
	}
	if _, err := ReadTargets(strings.NewReader("tcp:10.0.0.1:80\nnonsense\n")); err == nil {
		t.Error("ReadTargets accepted a line that is not a target")
	}
}

// The batch's namespace: loopback up; a veth pair, twt-drop on 10.99.0.1/24 with 10.99.0.2
// pinned to a MAC nobody owns, so what is sent there crosses to twt-sink, which discards
// frames not addressed to it: a silent drop, as a policy's (no neighbour resolution to fail
// and turn it into "unreachable"); and an unreachable route for 10.98.0.0/24 (the kernel
// answers at once that there is no way there).
const (
	batchHelperEnv = "TWT_NETCHECK_BATCH_HELPER"
	droppedAddr    = "10.99.0.2"
	noRouteAddr    = "10.98.0.1"
)

// Probing many targets at once tells every outcome apart, each on its own line, in the order
// given, and takes about one timeout, not one per target. It runs in a namespace of its own
// (twt-ncb...), where the drops and the missing route are.
func TestProbeAllTellsEveryOutcomeApartInOneTimeout(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipped: iproute2's ip is not installed")
	}
	name := fmt.Sprintf("twt-ncb%d", os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	run("-n", name, "link", "set", "lo", "up")
	run("-n", name, "link", "add", "twt-drop", "type", "veth", "peer", "name", "twt-sink")
	run("-n", name, "addr", "add", "10.99.0.1/24", "dev", "twt-drop")
	run("-n", name, "link", "set", "twt-drop", "up")
	run("-n", name, "link", "set", "twt-sink", "up")
	run("-n", name, "neigh", "add", droppedAddr, "lladdr", "02:00:00:00:00:02", "dev", "twt-drop", "nud", "permanent")
	run("-n", name, "route", "add", "unreachable", "10.98.0.0/24")

	// The probing itself runs in this test binary, started inside the namespace: every
	// socket it opens, on whatever thread, is then in the namespace.
	cmd := exec.Command("ip", "netns", "exec", name, os.Args[0], "-test.run=^TestProbeAllHelper$", "-test.v")
	cmd.Env = append(os.Environ(), batchHelperEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestProbeAllHelper") {
		t.Errorf("the batch in namespace %s: %v\n%s", name, err, out)
	}
}

// TestProbeAllHelper is the inside of TestProbeAllTellsEveryOutcomeApartInOneTimeout; alone
// it does nothing.
func TestProbeAllHelper(t *testing.T) {
	if os.Getenv(batchHelperEnv) != "1" {
		t.Skip("runs only inside the namespace TestProbeAllTellsEveryOutcomeApartInOneTimeout makes")
	}
	tcp, udp, _ := startServer(t)
	open := func(p int) string { return "127.0.0.1:" + strconv.Itoa(p) }
	// A port nobody listens on: port 1 in a namespace where nothing else runs.
	closed := "127.0.0.1:1"
	want := []Result{
		{Target: Target{TCP, open(tcp)}, Outcome: Connected},
		{Target: Target{UDP, open(udp)}, Outcome: Connected},
		{Target: Target{TCP, closed}, Outcome: Refused},
		{Target: Target{UDP, closed}, Outcome: Refused},
		{Target: Target{TCP, droppedAddr + ":80"}, Outcome: TimedOut},
		{Target: Target{UDP, droppedAddr + ":81"}, Outcome: TimedOut},
		{Target: Target{TCP, noRouteAddr + ":80"}, Outcome: Unreachable},
	}
	var targets []Target
	// Each target several times over, so the batch is larger than its parallelism.
	for range 4 {
		for _, w := range want {
			targets = append(targets, w.Target)
		}
	}
	const timeout = 700 * time.Millisecond
	start := time.Now()
	got := ProbeAll(t.Context(), targets, Options{Timeout: timeout}, 16)
	took := time.Since(start)
	if len(got) != len(targets) {
		t.Fatalf("%d results for %d targets", len(got), len(targets))
	}
	for i, r := range got {
		w := want[i%len(want)]
		if r.Target != w.Target || r.Outcome != w.Outcome {
			t.Errorf("result %d: %s, want %s %s", i, r, w.Target, w.Outcome)
		}
		if r.Outcome == Connected && !strings.HasPrefix(r.Detail, "pod=pod-a ") {
			t.Errorf("result %d: connected without the server's reply: %s", i, r)
		}
		// Every line reads back as printed.
		if back, err := ParseResult(r.String()); err != nil || back.Target != r.Target || back.Outcome != r.Outcome {
			t.Errorf("result %d: %q read back as %+v, %v", i, r.String(), back, err)
		}
	}
	// 28 targets, 8 of them timing out, 16 at a time: two rounds of timeouts at most, where
	// one at a time would take eight. Generous for a busy machine.
	if took > 4*timeout {
		t.Errorf("the batch took %s, want about %s (two rounds of %s)", took, 2*timeout, timeout)
	}
}
