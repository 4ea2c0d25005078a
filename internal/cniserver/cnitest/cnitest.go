// Package cnitest holds what the CNI tests share: throw-away network namespaces named "twt-*"
// that are removed when the test ends, a small in-memory ipam.Allocator, and a running
// cniserver on a temporary socket. It is imported by tests only.
package cnitest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netns"

	"github.com/twill-net/twill/internal/cniserver"
	"github.com/twill-net/twill/internal/ipam"
)

// NewNetns creates a named network namespace "twt-<label>-<random>" and removes it when the
// test ends. Links inside it (veth ends included) vanish with it.
func NewNetns(t testing.TB, label string) ns.NetNS {
	t.Helper()
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	name := fmt.Sprintf("twt-%s-%s", label, hex.EncodeToString(suffix))

	errc := make(chan error, 1)
	go func() {
		// The thread is left locked on purpose: it ends up in the new namespace, and when this
		// goroutine returns the runtime throws the thread away instead of reusing it.
		runtime.LockOSThread()
		h, err := netns.NewNamed(name)
		if err == nil {
			h.Close()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	n, err := ns.GetNS(filepath.Join("/var/run/netns", name))
	if err != nil {
		_ = netns.DeleteNamed(name)
		t.Fatalf("open netns %s: %v", name, err)
	}
	t.Cleanup(func() {
		n.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("remove netns %s: %v", name, err)
		}
	})
	return n
}

// FakeAllocator hands out addresses from one IPv4 and (optionally) one IPv6 prefix, in order.
type FakeAllocator struct {
	mu       sync.Mutex
	v4, v6   netip.Prefix
	next     uint64
	byHandle map[ipam.Handle][]ipam.Allocation

	// FailWith, when set, makes Allocate fail with it.
	FailWith error
	// Mangle, when set, rewrites what Allocate returns (to provoke plumbing failures).
	Mangle func([]ipam.Allocation) []ipam.Allocation
	// Releases counts Release calls per handle.
	Releases map[ipam.Handle]int
}

// NewFakeAllocator allocates from v4 and, when v6 is not "", from v6 too.
func NewFakeAllocator(v4, v6 string) *FakeAllocator {
	a := &FakeAllocator{v4: netip.MustParsePrefix(v4), byHandle: map[ipam.Handle][]ipam.Allocation{},
		Releases: map[ipam.Handle]int{}}
	if v6 != "" {
		a.v6 = netip.MustParsePrefix(v6)
	}
	return a
}

func nth(p netip.Prefix, n uint64) netip.Addr {
	b := p.Addr().AsSlice()
	for i := len(b) - 1; i >= 0 && n > 0; i-- {
		sum := uint64(b[i]) + n%256
		b[i] = byte(sum)
		n = n/256 + sum/256
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// Allocate implements ipam.Allocator.
func (a *FakeAllocator) Allocate(_ context.Context, owner ipam.Owner) ([]ipam.Allocation, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.FailWith != nil {
		return nil, a.FailWith
	}
	allocs, ok := a.byHandle[owner.Handle]
	if !ok {
		a.next++
		allocs = []ipam.Allocation{{Owner: owner, IP: nth(a.v4, a.next), Block: a.v4, Pool: "test-v4"}}
		if a.v6.IsValid() {
			allocs = append(allocs, ipam.Allocation{Owner: owner, IP: nth(a.v6, a.next), Block: a.v6, Pool: "test-v6"})
		}
		a.byHandle[owner.Handle] = allocs
	}
	if a.Mangle != nil {
		return a.Mangle(slices.Clone(allocs)), nil
	}
	return slices.Clone(allocs), nil
}

// Release implements ipam.Allocator.
func (a *FakeAllocator) Release(_ context.Context, h ipam.Handle) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.byHandle, h)
	a.Releases[h]++
	return nil
}

// Allocations implements ipam.Allocator.
func (a *FakeAllocator) Allocations() []ipam.Allocation {
	a.mu.Lock()
	defer a.mu.Unlock()
	var all []ipam.Allocation
	for _, allocs := range a.byHandle {
		all = append(all, allocs...)
	}
	return all
}

// Holds reports whether h has addresses now.
func (a *FakeAllocator) Holds(h ipam.Handle) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.byHandle[h]
	return ok
}

// ReleaseCount is how often h was released.
func (a *FakeAllocator) ReleaseCount(h ipam.Handle) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.Releases[h]
}

// StartServer runs a cniserver until the test ends (or stop is called) and waits for its
// socket to answer. cfg.SocketPath and cfg.PendingDeleteDir default to fresh temporary paths.
// stop cancels Run and waits for it to return; calling it again does nothing.
func StartServer(t testing.TB, cfg cniserver.Config, alloc ipam.Allocator) (srv *cniserver.Server, used cniserver.Config, stop func()) {
	t.Helper()
	if cfg.SocketPath == "" {
		cfg.SocketPath = filepath.Join(ShortTempDir(t), "cni.sock")
	}
	if cfg.PendingDeleteDir == "" {
		cfg.PendingDeleteDir = filepath.Join(t.TempDir(), "pending-del")
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	srv = cniserver.New(cfg, alloc, log)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("cniserver.Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, err := net.Dial("unix", cfg.SocketPath)
		if err == nil {
			conn.Close()
			return srv, cfg, stop
		}
		select {
		case err := <-done:
			done <- err
			t.Fatalf("cniserver stopped before serving: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("cniserver socket %s not answering: %v", cfg.SocketPath, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ShortTempDir is a temporary directory with a short path: unix socket paths must stay under
// 108 bytes, and t.TempDir's paths carry the (long) test name.
func ShortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "twt-")
	if err != nil {
		t.Fatalf("temp dir: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// ErrFake is a ready-made failure for FakeAllocator.FailWith.
var ErrFake = errors.New("fake allocator failure")
