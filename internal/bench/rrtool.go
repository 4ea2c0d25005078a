package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// The request/response load tool (`twill bench rr-server` and `twill bench rr-client`, hidden):
// TCP_RR and TCP_CRR as netperf defines them, because no Debian tool measures
// connect-per-request (netperf is not in Debian; sockperf and qperf have no TCP_CRR). The
// datapath suite runs each end as a process of its own inside the client's and the server's
// namespaces, with GOMAXPROCS=1, so that like netperf and netserver each end is one thread and
// a transaction costs what the path costs plus two wake-ups, the same in every scenario.

// RRResult is what one client run did.
type RRResult struct {
	Transactions int     `json:"transactions"`
	Seconds      float64 `json:"seconds"`
	// ConnectP50Micros and ConnectP99Micros are, under TCP_CRR, the percentiles of the time
	// connect() took (SYN out to SYN-ACK in: a new connection's first packet through the
	// whole path, service translation included), in microseconds.
	ConnectP50Micros float64 `json:"connect_p50_us,omitempty"`
	ConnectP99Micros float64 `json:"connect_p99_us,omitempty"`
}

// Rate is transactions per second.
func (r RRResult) Rate() float64 {
	if r.Seconds <= 0 {
		return 0
	}
	return float64(r.Transactions) / r.Seconds
}

// ServeRR listens on addr and answers every 1-byte request with a 1-byte response, on any
// number of connections, until ctx ends; a connection ends when its client closes it.
func ServeRR(ctx context.Context, addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	go func() { <-ctx.Done(); _ = l.Close() }()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Go(func() { answer(c) })
	}
}

func answer(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 1)
	for {
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		if _, err := c.Write(buf); err != nil {
			return
		}
	}
}

// roundTrip sends one byte and waits for the one-byte answer.
func roundTrip(c net.Conn, buf []byte) error {
	if _, err := c.Write(buf); err != nil {
		return err
	}
	_, err := io.ReadFull(c, buf)
	return err
}

// RunRRClient measures against target for d: with connectPerRequest false, 1-byte round trips
// on one connection (TCP_RR); with it true, a new connection per round trip (TCP_CRR). At
// least one transaction is made, so d = 0 probes the path. Under CRR the client closes with a
// reset (SO_LINGER 0): a normal close leaves a TIME_WAIT socket and conntrack entry per
// transaction, tens of thousands per figure, which would exhaust the client's ports and fill
// the machine-wide conntrack table.
func RunRRClient(ctx context.Context, target string, connectPerRequest bool, d time.Duration) (RRResult, error) {
	var dialer net.Dialer
	buf := []byte{'x'}
	n, start := 0, time.Now()
	deadline := start.Add(d)
	var conn net.Conn
	var connects []time.Duration
	defer func() {
		if conn != nil {
			_ = conn.Close()
		}
	}()
	for n == 0 || time.Now().Before(deadline) {
		if conn == nil {
			dialStart := time.Now()
			c, err := dialer.DialContext(ctx, "tcp", target)
			if err != nil {
				return RRResult{}, err
			}
			if connectPerRequest {
				connects = append(connects, time.Since(dialStart))
			}
			conn = c
			_ = conn.SetDeadline(deadline.Add(10 * time.Second))
		}
		if err := roundTrip(conn, buf); err != nil {
			return RRResult{}, fmt.Errorf("transaction %d: %w", n+1, err)
		}
		n++
		if connectPerRequest {
			_ = conn.(*net.TCPConn).SetLinger(0)
			_ = conn.Close()
			conn = nil
		}
		if ctx.Err() != nil {
			return RRResult{}, ctx.Err()
		}
	}
	res := RRResult{Transactions: n, Seconds: time.Since(start).Seconds()}
	if len(connects) > 0 {
		res.ConnectP50Micros = float64(Percentile(connects, 50)) / float64(time.Microsecond)
		res.ConnectP99Micros = float64(Percentile(connects, 99)) / float64(time.Microsecond)
	}
	return res, nil
}

// parseRRResult reads the client's output.
func parseRRResult(out []byte) (RRResult, error) {
	var r RRResult
	if err := json.Unmarshal(out, &r); err != nil {
		return r, fmt.Errorf("rr-client output %q: %w", out, err)
	}
	if r.Transactions <= 0 || r.Seconds <= 0 {
		return r, errors.New("rr-client made no transaction")
	}
	return r, nil
}
