package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/twill-net/twill/internal/lab/underlay"
)

// The datapath suite's load generators: iperf3 (Debian) for throughput, one TCP stream, and
// twill's own request/response tool (rrtool.go) for the transaction rates, each end a process
// in its namespace.

const (
	// iperf3Port and rrPort are where every scenario's servers listen (each in its own
	// server namespace, so the ports never collide).
	iperf3Port = 5201
	rrPort     = 7070
)

// iperf3Result is the part of `iperf3 -J` output the suite reads.
type iperf3Result struct {
	End struct {
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
			Seconds       float64 `json:"seconds"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

// parseIperf3 returns the receiver's throughput in Gbit/s from `iperf3 -J` output.
func parseIperf3(out []byte) (float64, error) {
	var r iperf3Result
	if err := json.Unmarshal(out, &r); err != nil {
		return 0, fmt.Errorf("iperf3 output is not its JSON: %w", err)
	}
	if r.Error != "" {
		return 0, fmt.Errorf("iperf3: %s", r.Error)
	}
	if r.End.SumReceived.BitsPerSecond <= 0 {
		return 0, errors.New("iperf3 reported no received bytes")
	}
	return r.End.SumReceived.BitsPerSecond / 1e9, nil
}

// startIperf3Server starts `iperf3 -s` in ns, bound to addr; stop kills it.
func startIperf3Server(ns *underlay.Node, addr netip.Addr) (stop func(), err error) {
	cmd := ns.Command(context.Background(), "iperf3", "-s", "-B", addr.String(), "-p", strconv.Itoa(iperf3Port))
	return startServer(cmd, "iperf3 server", ns)
}

// startServer starts cmd, a server in ns that runs until killed (its output discarded);
// stop kills it and waits for it to exit.
func startServer(cmd *exec.Cmd, what string, ns *underlay.Node) (stop func(), err error) {
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := underlay.StartCommand(cmd); err != nil {
		return nil, fmt.Errorf("starting the %s in %s: %w", what, ns.Name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	return func() {
		_ = cmd.Process.Kill()
		<-done
	}, nil
}

// runIperf3 runs one single-stream iperf3 client in ns against addr for d (after one untimed
// second of slow start) and returns Gbit/s. A server that is not listening yet is retried.
func runIperf3(ctx context.Context, ns *underlay.Node, addr netip.Addr, d time.Duration) (float64, error) {
	secs := strconv.Itoa(max(1, int(d.Round(time.Second)/time.Second)))
	var last error
	for attempt := 0; attempt < 10; attempt++ {
		cmd := ns.Command(ctx, "iperf3", "-c", addr.String(), "-p", strconv.Itoa(iperf3Port), "-t", secs, "-O", "1", "-J")
		out, err := cmd.Output()
		gbps, perr := parseIperf3(out)
		if perr == nil {
			return gbps, nil
		}
		last = errors.Join(err, perr)
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
	return 0, fmt.Errorf("iperf3 from %s to %s: %w", ns.Name, addr, last)
}

// startRRServer starts `twill bench rr-server` in ns, listening on addr; stop kills it.
func startRRServer(twillBin string, ns *underlay.Node, addr netip.Addr) (stop func(), err error) {
	cmd := ns.Command(context.Background(), twillBin, "bench", "rr-server", "--listen", netip.AddrPortFrom(addr, rrPort).String())
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	return startServer(cmd, "request/response server", ns)
}

// runRRClient runs `twill bench rr-client` in ns against addr for d and returns transactions
// per second (connectPerRequest: TCP_CRR, else TCP_RR).
func runRRClient(ctx context.Context, twillBin string, ns *underlay.Node, addr netip.Addr, connectPerRequest bool, d time.Duration) (float64, error) {
	r, err := runRRClientResult(ctx, twillBin, ns, netip.AddrPortFrom(addr, rrPort), connectPerRequest, d)
	return r.Rate(), err
}

// runRRClientResult is runRRClient against any address and port, with the whole result.
func runRRClientResult(ctx context.Context, twillBin string, ns *underlay.Node, target netip.AddrPort, connectPerRequest bool, d time.Duration) (RRResult, error) {
	args := []string{"bench", "rr-client", "--target", target.String(), "--duration", d.String()}
	if connectPerRequest {
		args = append(args, "--connect-per-request")
	}
	cmd := ns.Command(ctx, twillBin, args...)
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return RRResult{}, fmt.Errorf("rr-client in %s to %s: %w: %s", ns.Name, target, err, strings.TrimSpace(stderr.String()))
	}
	return parseRRResult(out)
}

// waitReachable probes addr's request/response server from ns until one round trip succeeds
// (routes of a restarted agent take a moment).
func waitReachable(ctx context.Context, twillBin string, ns *underlay.Node, addr netip.Addr, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		attempt, cancelAttempt := context.WithTimeout(ctx, 3*time.Second)
		_, last = runRRClient(attempt, twillBin, ns, addr, false, 0)
		cancelAttempt()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s cannot reach %s: %w", ns.Name, addr, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// enableForwarding turns IPv4 forwarding on in ns (/proc/sys/net follows the namespace of
// the thread that opens it).
func enableForwarding(ns *underlay.Node) error {
	return ns.Do(func() error {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
			return fmt.Errorf("enabling forwarding in %s: %w", ns.Name, err)
		}
		return nil
	})
}
