package conformance

import (
	"context"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mattfenwick/cyclonus/pkg/generator"
)

// EnvMode selects how many of cyclonus's cases run: unset or "ci" runs ciCases (a few
// minutes); "full" runs every case cyclonus v0.5.6 generates. EnvCases, a regular expression,
// narrows either to the cases whose description matches.
const (
	EnvMode  = "TWILL_CONFORMANCE"
	EnvCases = "TWILL_CONFORMANCE_CASES"
)

// ciCases are positions in cyclonus v0.5.6's GenerateAllTestCases (pinned in go.mod, so
// stable), chosen to cover each kind of rule once: default deny egress, peers by pod and by
// namespace label, ipBlock with except, a named UDP port and a pod relabelled twice. A step costs
// about 5 s on 2 cores (the 2 s wait for enforcement, then one exec per source pod probing all
// its targets at once), so the five take well under a minute; TWILL_CONFORMANCE=full runs
// every case. The descriptions guard the positions.
var ciCases = map[int]string{
	6:   "egress: deny all",
	19:  "pods by label + ns by label",
	21:  "ipblock with except",
	165: "direction,ingress,named-port,port,protocol,udp",
	198: "Update pod so that policy applies, then again so it no longer applies",
}

var (
	suiteOnce sync.Once
	suite     *Suite
	suiteErr  error
)

// needSuite sets cyclonus's shape up on the lab once for the package's tests.
func needSuite(t *testing.T) *Suite {
	t.Helper()
	c := needLab(t)
	suiteOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		start := time.Now()
		suite, suiteErr = Setup(ctx, c)
		t.Logf("namespaces x, y, z with pods a, b, c serving in %s", time.Since(start).Round(100*time.Millisecond))
	})
	if suiteErr != nil {
		t.Fatalf("setting cyclonus's shape up: %v", suiteErr)
	}
	return suite
}

// Every probe of cyclonus's truth table, run with real packets between pods of the lab, agrees
// with cyclonus's matcher.
func TestNetworkPolicyMatchesCyclonus(t *testing.T) {
	s := needSuite(t)
	all := s.Cases(nil, nil)
	var cases []*generator.TestCase
	switch mode := os.Getenv(EnvMode); mode {
	case "", "ci":
		for i, want := range ciCases {
			if i >= len(all) || all[i].Description != want {
				t.Fatalf("cyclonus case %d is not %q: the pinned generator changed; choose the CI cases again", i, want)
			}
		}
		for i, tc := range all {
			if _, ok := ciCases[i]; ok {
				cases = append(cases, tc)
			}
		}
	case "full":
		cases = all
	default:
		t.Fatalf("$%s=%q: want ci or full", EnvMode, mode)
	}
	if expr := os.Getenv(EnvCases); expr != "" {
		re, err := regexp.Compile(expr)
		if err != nil {
			t.Fatalf("$%s: %v", EnvCases, err)
		}
		var kept []*generator.TestCase
		for _, tc := range cases {
			if re.MatchString(tc.Description) {
				kept = append(kept, tc)
			}
		}
		cases = kept
	}
	ctx := t.Context()
	var total CaseResult
	failed := 0
	deadline, hasDeadline := t.Deadline()
	for i, tc := range cases {
		// Stop before go test's -timeout would kill the run: a killed run neither tears the
		// lab down nor says which cases passed.
		if hasDeadline && time.Until(deadline) < 3*time.Minute {
			t.Errorf("stopped before case %d of %d: -timeout is less than 3 minutes away", i+1, len(cases))
			failed += len(cases) - i
			break
		}
		res := s.Run(ctx, tc)
		total.Steps += res.Steps
		total.Probes += res.Probes
		total.Settled += res.Settled
		total.Loopback += res.Loopback
		total.Unprobed += res.Unprobed
		total.Mismatches = append(total.Mismatches, res.Mismatches...)
		total.Took += res.Took
		t.Logf("case %d/%d %q [%s]: %d steps, %d probes, %d mismatches, %d settled on retry, %s",
			i+1, len(cases), tc.Description, strings.Join(tc.Tags.Keys(), ","), res.Steps, res.Probes,
			len(res.Mismatches), res.Settled, res.Took.Round(100*time.Millisecond))
		if res.Err != nil {
			failed++
			t.Errorf("case %q: %v", tc.Description, res.Err)
		}
		for _, m := range res.Mismatches {
			t.Errorf("mismatch: %s", m)
		}
		if ctx.Err() != nil {
			break
		}
	}
	t.Logf("cyclonus conformance: %d cases (%d could not run), %d steps, %d probes, %d mismatches, "+
		"%d settled on retry, %d loopback probes expected allowed against the oracle, %d oracle probes to unserved ports not run, %s",
		len(cases), failed, total.Steps, total.Probes, len(total.Mismatches), total.Settled, total.Loopback, total.Unprobed,
		total.Took.Round(time.Second))
	writeSummary(t, "cyclonus cases="+strconv.Itoa(len(cases)), total)
}

// writeSummary appends the run's numbers to $TWILL_CONFORMANCE_REPORT when set (for the full
// run's record).
func writeSummary(t *testing.T, what string, r CaseResult) {
	path := os.Getenv("TWILL_CONFORMANCE_REPORT")
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Errorf("report: %v", err)
		return
	}
	defer f.Close()
	var b strings.Builder
	b.WriteString(what + ": steps=" + strconv.Itoa(r.Steps) + " probes=" + strconv.Itoa(r.Probes) +
		" mismatches=" + strconv.Itoa(len(r.Mismatches)) + " settled=" + strconv.Itoa(r.Settled) +
		" loopback=" + strconv.Itoa(r.Loopback) + " unprobed=" + strconv.Itoa(r.Unprobed) + "\n")
	for _, m := range r.Mismatches {
		b.WriteString("  " + m.String() + "\n")
	}
	_, _ = f.WriteString(b.String())
}
