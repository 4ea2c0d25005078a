package netcheck

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"
)

// Protocols Connect speaks.
const (
	TCP  = "tcp"
	UDP  = "udp"
	HTTP = "http"
)

// ErrTimeout means nothing answered in time (a drop on the way, or no route); ErrRefused means
// the destination answered that nothing listens there (a TCP reset, or ICMP port unreachable
// for UDP); ErrUnreachable that there is no way there (no route, or ICMP host or network
// unreachable). The difference matters: a refusal proves the path works.
var (
	ErrTimeout     = errors.New("timed out")
	ErrRefused     = errors.New("connection refused")
	ErrUnreachable = errors.New("unreachable")
)

// Options tune a probe.
type Options struct {
	Timeout time.Duration
	// FillMTU (UDP) sends datagrams that fill the path MTU the kernel knows for the
	// destination (the route's or the interface's MTU), with fragmentation forbidden: the
	// probe then fails if the network cannot carry the largest packet the pod may send.
	FillMTU bool
}

// Connect reaches the netcheck server at addr (host:port) over protocol and returns its reply.
// Its errors wrap ErrTimeout, ErrRefused or ErrUnreachable when they are one of them.
func Connect(ctx context.Context, protocol, addr string, timeout time.Duration) (Reply, error) {
	return Probe(ctx, protocol, addr, Options{Timeout: timeout})
}

// Probe is Connect with options.
func Probe(ctx context.Context, protocol, addr string, o Options) (Reply, error) {
	timeout := o.Timeout
	if o.FillMTU && protocol != UDP {
		return Reply{}, errors.New("netcheck: filling the MTU needs UDP")
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var (
		r   Reply
		err error
	)
	switch protocol {
	case TCP:
		r, err = connectTCP(ctx, addr)
	case UDP:
		r, err = connectUDP(ctx, addr, o.FillMTU)
	case HTTP:
		r, err = connectHTTP(ctx, addr)
	default:
		return Reply{}, fmt.Errorf("netcheck: unknown protocol %q (want tcp, udp or http)", protocol)
	}
	if err != nil {
		return Reply{}, fmt.Errorf("%s %s: %w", protocol, addr, classify(ctx, err))
	}
	return r, nil
}

// classify wraps err with ErrTimeout or ErrRefused when it is one of them.
func classify(ctx context.Context, err error) error {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w: %w", ErrRefused, err)
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return fmt.Errorf("%w: %w", ErrUnreachable, err)
	case errors.Is(err, context.DeadlineExceeded), ctx.Err() != nil, errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("%w: %w", ErrTimeout, err)
	}
	return err
}

func connectTCP(ctx context.Context, addr string) (Reply, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return Reply{}, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return Reply{}, err
	}
	return ParseReply(strings.TrimSpace(line))
}

// connectUDP sends a datagram every 200 ms until a reply comes (a lost first packet, say
// while a neighbour is resolved, must not fail the probe) or the deadline passes. The socket
// is connected, so an ICMP port unreachable surfaces as ECONNREFUSED on read.
func connectUDP(ctx context.Context, addr string, fillMTU bool) (Reply, error) {
	d := net.Dialer{}
	if fillMTU {
		d.Control = forbidFragmentation
	}
	conn, err := d.DialContext(ctx, "udp", addr)
	if err != nil {
		return Reply{}, err
	}
	defer conn.Close()
	payload := []byte("netcheck\n")
	if fillMTU {
		size, err := payloadFillingMTU(conn.(*net.UDPConn))
		if err != nil {
			return Reply{}, err
		}
		payload = make([]byte, size)
	}
	deadline, _ := ctx.Deadline()
	buf := make([]byte, 2048)
	for {
		if _, err := conn.Write(payload); err != nil {
			return Reply{}, err
		}
		next := time.Now().Add(200 * time.Millisecond)
		if !deadline.IsZero() && deadline.Before(next) {
			next = deadline
		}
		_ = conn.SetReadDeadline(next)
		n, err := conn.Read(buf)
		if err == nil {
			r, err := ParseReply(strings.TrimSpace(string(buf[:n])))
			if err == nil && fillMTU && r.Bytes != len(payload) {
				err = fmt.Errorf("server received %d bytes of %d", r.Bytes, len(payload))
			}
			return r, err
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() || ctx.Err() != nil {
			return Reply{}, err
		}
	}
}

func connectHTTP(ctx context.Context, addr string) (Reply, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
	if err != nil {
		return Reply{}, err
	}
	// No proxy from the environment: the probe is about the direct path.
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return Reply{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Reply{}, fmt.Errorf("HTTP status %s", resp.Status)
	}
	var r Reply
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return Reply{}, fmt.Errorf("decoding the reply: %w", err)
	}
	return r, nil
}
