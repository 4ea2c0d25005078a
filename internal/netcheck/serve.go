// Package netcheck is twill's built-in workload: a server answering on TCP, UDP and HTTP with
// the name of the pod it runs in and the client address it saw, and a prober that connects to
// such a server and tells success, timeout and refusal apart. The lab's workload image runs it
// (`twill netcheck serve|connect`), and `twill connectivity test` drives it inside pods: the
// client address in a reply shows whether the datapath rewrote the source on the way.
package netcheck

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Reply is what a server answers on every protocol.
type Reply struct {
	// Pod is the server's name ($POD_NAME, else the hostname: a pod's hostname is its name).
	Pod string `json:"pod"`
	// Client is the client's address (ip:port) as the server saw it.
	Client string `json:"client"`
	// Bytes is the size of the datagram received (UDP only).
	Bytes int `json:"bytes,omitempty"`
}

// String is the one-line form sent over TCP and UDP, and printed by Connect's callers.
func (r Reply) String() string {
	s := "pod=" + r.Pod + " client=" + r.Client
	if r.Bytes > 0 {
		s += " bytes=" + strconv.Itoa(r.Bytes)
	}
	return s
}

// ParseReply reads the one-line form.
func ParseReply(line string) (Reply, error) {
	var r Reply
	for _, field := range strings.Fields(line) {
		key, value, _ := strings.Cut(field, "=")
		switch key {
		case "pod":
			r.Pod = value
		case "client":
			r.Client = value
		case "bytes":
			r.Bytes, _ = strconv.Atoi(value)
		}
	}
	if r.Pod == "" || r.Client == "" {
		return Reply{}, fmt.Errorf("not a netcheck reply: %q", line)
	}
	return r, nil
}

// Server serves the echo on the configured ports.
type Server struct {
	// Name is the name put in replies.
	Name string
	// TCP, UDP and HTTP are the ports to serve, on every address of the namespace.
	TCP, UDP, HTTP []int
	Log            *slog.Logger

	mu    sync.Mutex
	addrs []net.Addr
	ready chan struct{}
}

// Addrs returns the bound addresses once Run listens on all of them (useful with port 0).
func (s *Server) Addrs(ctx context.Context) ([]net.Addr, error) {
	s.init()
	select {
	case <-s.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]net.Addr(nil), s.addrs...), nil
}

func (s *Server) init() {
	s.mu.Lock()
	if s.ready == nil {
		s.ready = make(chan struct{})
	}
	s.mu.Unlock()
}

// Run listens on every port and serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	s.init()
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	if len(s.TCP)+len(s.UDP)+len(s.HTTP) == 0 {
		return errors.New("netcheck: no port to serve")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var lc net.ListenConfig
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			_ = c.Close()
		}
	}()
	var serves []func() error
	for _, port := range s.TCP {
		l, err := lc.Listen(ctx, "tcp", ":"+strconv.Itoa(port))
		if err != nil {
			return fmt.Errorf("netcheck: TCP port %d: %w", port, err)
		}
		closers = append(closers, l)
		s.addrs = append(s.addrs, l.Addr())
		serves = append(serves, func() error { return s.serveTCP(l) })
	}
	for _, port := range s.UDP {
		pc, err := lc.ListenPacket(ctx, "udp", ":"+strconv.Itoa(port))
		if err != nil {
			return fmt.Errorf("netcheck: UDP port %d: %w", port, err)
		}
		closers = append(closers, pc)
		s.addrs = append(s.addrs, pc.LocalAddr())
		serves = append(serves, func() error { return s.serveUDP(pc) })
	}
	for _, port := range s.HTTP {
		l, err := lc.Listen(ctx, "tcp", ":"+strconv.Itoa(port))
		if err != nil {
			return fmt.Errorf("netcheck: HTTP port %d: %w", port, err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(s.serveHTTP), ReadHeaderTimeout: 10 * time.Second}
		closers = append(closers, srv)
		s.addrs = append(s.addrs, l.Addr())
		serves = append(serves, func() error {
			if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	close(s.ready)
	s.Log.Info("netcheck serving", "name", s.Name, "tcp", s.TCP, "udp", s.UDP, "http", s.HTTP)
	errs := make(chan error, len(serves))
	for _, serve := range serves {
		go func() { errs <- serve() }()
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-errs:
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("netcheck: %w", err)
	}
}

// serveTCP greets each connection with the reply line, then echoes what the client sends
// until it closes (so a client can measure a round trip on the same connection).
func (s *Server) serveTCP(l net.Listener) error {
	for {
		conn, err := l.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		go func() {
			defer conn.Close()
			reply := Reply{Pod: s.Name, Client: conn.RemoteAddr().String()}
			if _, err := io.WriteString(conn, reply.String()+"\n"); err != nil {
				return
			}
			_ = conn.SetDeadline(time.Now().Add(time.Minute))
			_, _ = io.Copy(conn, bufio.NewReader(conn))
		}()
	}
}

// serveUDP answers each datagram with the reply line.
func (s *Server) serveUDP(pc net.PacketConn) error {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		reply := Reply{Pod: s.Name, Client: from.String(), Bytes: n}
		_, _ = pc.WriteTo([]byte(reply.String()+"\n"), from)
	}
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(Reply{Pod: s.Name, Client: r.RemoteAddr})
}
