package netcheck

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
)

// A batch probes many targets from one place at once and reports one line per target. A
// test that checks a whole matrix of pairs then pays one exec into each source pod, not one
// per pair: the exec (API server, kubelet, runtime) costs far more than the probe itself.

// Target is one destination of a batch: a protocol and a host:port.
type Target struct {
	Protocol string // TCP, UDP or HTTP
	Addr     string // host:port; an IPv6 host in brackets
}

// String is the form ParseTarget reads: "tcp:10.244.1.5:80", "udp:[fd00::5]:81".
func (t Target) String() string { return t.Protocol + ":" + t.Addr }

// ParseTarget reads "PROTOCOL:HOST:PORT".
func ParseTarget(s string) (Target, error) {
	proto, addr, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok {
		return Target{}, fmt.Errorf("target %q: want PROTOCOL:HOST:PORT", s)
	}
	switch proto {
	case TCP, UDP, HTTP:
	default:
		return Target{}, fmt.Errorf("target %q: unknown protocol %q (want tcp, udp or http)", s, proto)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" || port == "" {
		return Target{}, fmt.Errorf("target %q: want PROTOCOL:HOST:PORT", s)
	}
	return Target{Protocol: proto, Addr: addr}, nil
}

// Outcome is how a probe ended, as a batch line names it.
type Outcome string

// The outcomes of a probe. Connected means the server answered; TimedOut, Refused and
// Unreachable are the errors Probe tells apart (ErrTimeout, ErrRefused, ErrUnreachable);
// Failed is any other error (an unexpected reply, a local failure).
const (
	Connected   Outcome = "connected"
	TimedOut    Outcome = "timeout"
	Refused     Outcome = "refused"
	Unreachable Outcome = "unreachable"
	Failed      Outcome = "error"
)

// OutcomeOf classifies an error Probe returned (nil: Connected).
func OutcomeOf(err error) Outcome {
	switch {
	case err == nil:
		return Connected
	case errors.Is(err, ErrRefused):
		return Refused
	case errors.Is(err, ErrTimeout):
		return TimedOut
	case errors.Is(err, ErrUnreachable):
		return Unreachable
	}
	return Failed
}

// Result is one target's line of a batch.
type Result struct {
	Target  Target
	Outcome Outcome
	// Detail is the server's reply when connected, else the error.
	Detail string
}

// String is the line printed for the result: "TARGET OUTCOME DETAIL" (the detail, free
// text on one line, runs to the end).
func (r Result) String() string {
	detail := strings.Join(strings.Fields(r.Detail), " ")
	return strings.TrimRight(r.Target.String()+" "+string(r.Outcome)+" "+detail, " ")
}

// ParseResult reads a line String printed.
func ParseResult(line string) (Result, error) {
	fields := strings.SplitN(strings.TrimSpace(line), " ", 3)
	if len(fields) < 2 {
		return Result{}, fmt.Errorf("not a probe result: %q", line)
	}
	t, err := ParseTarget(fields[0])
	if err != nil {
		return Result{}, fmt.Errorf("not a probe result: %q: %w", line, err)
	}
	r := Result{Target: t, Outcome: Outcome(fields[1])}
	switch r.Outcome {
	case Connected, TimedOut, Refused, Unreachable, Failed:
	default:
		return Result{}, fmt.Errorf("not a probe result: %q: unknown outcome %q", line, fields[1])
	}
	if len(fields) == 3 {
		r.Detail = fields[2]
	}
	return r, nil
}

// ProbeAll probes every target with Probe, at most parallel at once (at least one), and
// returns the results in the targets' order.
func ProbeAll(ctx context.Context, targets []Target, o Options, parallel int) []Result {
	results := make([]Result, len(targets))
	sem := make(chan struct{}, max(parallel, 1))
	var wg sync.WaitGroup
	for i, t := range targets {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			reply, err := Probe(ctx, t.Protocol, t.Addr, o)
			r := Result{Target: t, Outcome: OutcomeOf(err)}
			if err != nil {
				r.Detail = err.Error()
			} else {
				r.Detail = reply.String()
			}
			results[i] = r
		}()
	}
	wg.Wait()
	return results
}

// ReadTargets reads targets from r, one a line (blank lines and lines starting with # are
// skipped).
func ReadTargets(r io.Reader) ([]Target, error) {
	var out []Target
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		t, err := ParseTarget(line)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, sc.Err()
}

// ReadResults reads a batch's output: one result per line, in the order printed.
func ReadResults(r io.Reader) ([]Result, error) {
	var out []Result
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		res, err := ParseResult(sc.Text())
		if err != nil {
			return out, err
		}
		out = append(out, res)
	}
	return out, sc.Err()
}
