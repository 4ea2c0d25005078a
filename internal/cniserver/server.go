// Package cniserver is the agent side of twill's CNI: it serves the plugin's requests on a unix
// socket (internal/cniproto), asks IPAM for the pod's addresses, and plumbs the endpoint: a veth
// pair between the node and the pod, the pod's addresses, routes and gateway neighbours, and the
// node's route and neighbour to the pod. It also finishes the DELs the plugin spooled while the
// agent was down, and releases leaked attachments on GC.
package cniserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/twill-net/twill/internal/cniproto"
	"github.com/twill-net/twill/internal/ipam"
)

// Config is what the server needs from the agent.
type Config struct {
	// SocketPath is the unix socket the plugin connects to (cniproto.DefaultSocket in production).
	SocketPath string
	// PendingDeleteDir is where the plugin spools DELs while the agent is unreachable.
	PendingDeleteDir string
	// HostNetns is the path of the node's network namespace, where host-side veths and routes
	// go; "" means the agent's own namespace (the agent runs with the host network).
	HostNetns string
	// MTU of the pod's interface and of the host-side veth; 0 keeps the kernel default.
	MTU int
	// Ready says whether the agent can serve ADDs (nil error = ready). STATUS reports it, and ADD
	// is refused early while it fails. nil means always ready.
	Ready func() error
	// BeforeReady, when set, is called by ADD once the pod's addresses are allocated and before
	// the endpoint is plumbed: the agent puts the pod's policy in force there, so that the pod's
	// first packet is already policed. An error fails the ADD, which then releases the
	// addresses (and so does a failure of the plumbing after it).
	BeforeReady func(ctx context.Context, ep Endpoint) error
}

// Endpoint is a new pod attachment as BeforeReady sees it.
type Endpoint struct {
	PodNamespace, PodName, PodUID string
	ContainerID, IfName           string
	IPs                           []netip.Addr
}

// pendingRescan is how often spooled DELs are looked for after start. A DEL can be spooled just
// as the agent comes up (the plugin gave up a moment before the socket appeared), so a single
// scan at start is not enough; reading an empty directory twice a minute costs nothing.
const pendingRescan = 30 * time.Second

// opTimeout bounds one ADD/DEL/CHECK/GC. The work is detached from the plugin's connection so
// that a plugin killed half-way cannot leave an ADD half-done without its rollback.
const opTimeout = 2 * time.Minute

// Server serves the CNI socket and owns the endpoints it creates.
type Server struct {
	cfg   Config
	alloc ipam.Allocator
	log   *slog.Logger

	locks handleLocks
	// gcMu keeps GC apart from every other operation: ADD/DEL/CHECK hold it shared, GC holds it
	// exclusively, so GC never removes a veth that an ADD in flight has just made.
	gcMu sync.RWMutex
}

// New returns a server; Run starts it.
func New(cfg Config, alloc ipam.Allocator, log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	return &Server{cfg: cfg, alloc: alloc, log: log.With("component", "cniserver")}
}

// Run listens on the socket (owner-only permissions), completes the DELs spooled while the
// agent was away, and serves until ctx is done; it removes the socket on the way out.
func (s *Server) Run(ctx context.Context) error {
	path := s.cfg.SocketPath
	if path == "" {
		return errors.New("cniserver: no socket path configured")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create socket directory: %w", err)
	}
	// A socket file left by a crashed agent blocks Listen; one that still answers belongs to a
	// live agent, which we must not steal from.
	if conn, err := net.Dial("unix", path); err == nil {
		conn.Close()
		return fmt.Errorf("another process is already serving %s: stop it first", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", path, err)
	}
	defer os.Remove(path)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("restrict socket %s: %w", path, err)
	}

	srv := &http.Server{Handler: s.handler(), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	s.log.Info("serving CNI requests", "socket", path)

	// The spool is worked on only while the socket is served, so DELs the plugin spools from
	// now on are rare (it can reach us) and picked up by the next scan.
	pendingCtx, stopPending := context.WithCancel(ctx)
	defer stopPending()
	pendingDone := make(chan struct{})
	go func() {
		defer close(pendingDone)
		s.completePendingLoop(pendingCtx)
	}()

	select {
	case <-ctx.Done():
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err = srv.Shutdown(shutdownCtx)
		<-pendingDone
		if err != nil {
			return fmt.Errorf("shut down CNI server: %w", err)
		}
		return nil
	case err := <-served:
		stopPending()
		<-pendingDone
		return fmt.Errorf("serve CNI socket %s: %w", path, err)
	}
}

func (s *Server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+cniproto.PathAdd, s.serveAdd)
	mux.HandleFunc("POST "+cniproto.PathDel, s.serveDel)
	mux.HandleFunc("POST "+cniproto.PathCheck, s.serveCheck)
	mux.HandleFunc("POST "+cniproto.PathGC, s.serveGC)
	mux.HandleFunc("POST "+cniproto.PathStatus, s.serveStatus)
	return mux
}

// opContext detaches the work from the plugin's connection (see opTimeout).
func opContext(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(r.Context()), opTimeout)
}

func (s *Server) serveAdd(w http.ResponseWriter, r *http.Request) {
	var req cniproto.Request
	if !decode(w, r, &req) {
		return
	}
	ctx, cancel := opContext(r)
	defer cancel()
	start := time.Now()
	result, err := s.Add(ctx, req)
	log := s.log.With("op", "add", "containerID", req.ContainerID, "ifName", req.IfName,
		"pod", req.PodNamespace+"/"+req.PodName, "took", time.Since(start).Round(time.Microsecond))
	if err != nil {
		log.Warn("ADD failed", "err", err)
		writeError(w, err)
		return
	}
	log.Info("ADD done", "hostVeth", result.Interfaces[0].Name)
	writeJSON(w, result)
}

func (s *Server) serveDel(w http.ResponseWriter, r *http.Request) {
	var req cniproto.Request
	if !decode(w, r, &req) {
		return
	}
	ctx, cancel := opContext(r)
	defer cancel()
	if err := requireHandle(req); err != nil {
		writeError(w, err)
		return
	}
	h := ipam.Handle{ContainerID: req.ContainerID, IfName: req.IfName}
	if err := s.DeleteEndpoint(ctx, h); err != nil {
		s.log.Warn("DEL failed", "containerID", h.ContainerID, "ifName", h.IfName, "err", err)
		writeError(w, err)
		return
	}
	s.log.Info("DEL done", "containerID", h.ContainerID, "ifName", h.IfName)
	writeJSON(w, struct{}{})
}

func (s *Server) serveCheck(w http.ResponseWriter, r *http.Request) {
	var req cniproto.Request
	if !decode(w, r, &req) {
		return
	}
	ctx, cancel := opContext(r)
	defer cancel()
	if err := s.Check(ctx, req); err != nil {
		s.log.Warn("CHECK found a problem", "containerID", req.ContainerID, "ifName", req.IfName, "err", err)
		writeError(w, err)
		return
	}
	writeJSON(w, struct{}{})
}

func (s *Server) serveGC(w http.ResponseWriter, r *http.Request) {
	var req cniproto.GCRequest
	if !decode(w, r, &req) {
		return
	}
	ctx, cancel := opContext(r)
	defer cancel()
	released, err := s.GC(ctx, req.ValidAttachments)
	if err != nil {
		s.log.Warn("GC incomplete", "released", len(released), "err", err)
		writeError(w, err)
		return
	}
	s.log.Info("GC done", "released", len(released))
	writeJSON(w, cniproto.GCResponse{Released: released})
}

func (s *Server) serveStatus(w http.ResponseWriter, _ *http.Request) {
	if err := s.ready(); err != nil {
		writeError(w, types.NewError(types.ErrPluginNotAvailable, "twill agent is not ready: "+err.Error(), ""))
		return
	}
	writeJSON(w, struct{}{})
}

func (s *Server) ready() error {
	if s.cfg.Ready == nil {
		return nil
	}
	return s.cfg.Ready()
}

func decode(w http.ResponseWriter, r *http.Request, into any) bool {
	if err := json.NewDecoder(r.Body).Decode(into); err != nil {
		writeError(w, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("twill agent cannot decode the request: %v", err), ""))
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// writeError replies with a CNI error; anything that is not already one becomes code 999.
func writeError(w http.ResponseWriter, err error) {
	cniErr := &types.Error{}
	if !errors.As(err, &cniErr) {
		cniErr = types.NewError(types.ErrInternal, err.Error(), "")
	}
	status := http.StatusInternalServerError
	switch cniErr.Code {
	case types.ErrTryAgainLater, types.ErrPluginNotAvailable:
		status = http.StatusServiceUnavailable
	case types.ErrIncompatibleCNIVersion, types.ErrUnsupportedField, types.ErrUnknownContainer,
		types.ErrInvalidEnvironmentVariables, types.ErrDecodingFailure, types.ErrInvalidNetworkConfig, types.ErrInvalidNetNS:
		status = http.StatusBadRequest
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(cniErr)
}

// requireHandle checks the fields every per-attachment verb needs.
func requireHandle(req cniproto.Request) error {
	if req.ContainerID == "" || req.IfName == "" {
		return types.NewError(types.ErrInvalidEnvironmentVariables,
			"twill agent: the request has no container ID or interface name (CNI_CONTAINERID, CNI_IFNAME)", "")
	}
	return nil
}
