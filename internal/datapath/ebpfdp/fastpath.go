// Package ebpfdp is twill's eBPF datapath. Its first piece is the fast path for established
// connections (bpf/fastpath.c): a tcx ingress program that forwards packets of connections
// netfilter has already accepted straight to their egress device, past the node's netfilter
// hooks and routing code. The agent loads it, attaches it to the node's underlay interface,
// twill's VXLAN device and every pod's host-side veth, and closes it on shutdown.
//
// Nothing is pinned: every attachment is a BPF link held by this process, so when the agent
// stops (or dies) the kernel detaches the program and traffic takes the normal path again.
package ebpfdp

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Stat indexes the program's counters (enum stat in bpf/fastpath.c).
type Stat uint32

// The counters, in the C enum's order.
const (
	StatFastLocal  Stat = iota // redirected into a pod on this node
	StatFastRemote             // redirected towards another node
	StatNotIPL4                // not TCP/UDP over plain IPv4/IPv6 (fragments, options, ...)
	StatTCPControl             // TCP SYN, FIN or RST
	StatNotForward             // the FIB does not forward it (for the node itself, or a miss)
	StatNoCT                   // no conntrack entry
	StatCTNotReady             // entry not confirmed or not assured, NAT'd, or TCP past established
	statCount
)

var statNames = [statCount]string{"fast_local", "fast_remote", "not_ip_l4", "tcp_control", "not_forwarded", "no_conntrack", "conntrack_not_ready"}

func (s Stat) String() string {
	if s < statCount {
		return statNames[s]
	}
	return fmt.Sprintf("stat(%d)", uint32(s))
}

// Stats are the counters summed over CPUs.
type Stats [statCount]uint64

// Fast returns the packets the fast path forwarded.
func (s Stats) Fast() uint64 { return s[StatFastLocal] + s[StatFastRemote] }

// FastPath is the loaded program and its attachments in the calling namespace.
type FastPath struct {
	log  *slog.Logger
	objs fastpathObjects

	mu    sync.Mutex
	links map[int]attachment // by ifindex
}

type attachment struct {
	link link.Link
	pod  bool
}

// Load loads the program into the kernel. It is the feature probe: it fails where the kernel
// lacks tcx, the conntrack kfuncs or anything else the program needs, and the error says which.
func Load(log *slog.Logger) (*FastPath, error) {
	f := &FastPath{log: log, links: map[int]attachment{}}
	if err := loadFastpathObjects(&f.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("loading the eBPF fast path: the verifier refused it: %w (log ends: %q)", err, lastLines(ve.Log, 5))
		}
		return nil, fmt.Errorf("loading the eBPF fast path: %w", err)
	}
	return f, nil
}

func lastLines(log []string, n int) []string {
	if len(log) > n {
		return log[len(log)-n:]
	}
	return log
}

// Attach attaches the program at ingress of the link with ifindex; pod says the link is the
// host side of a pod's veth pair, so packets routed to it go straight into the pod. Attaching
// a link already attached only updates pod.
func (f *FastPath) Attach(ifindex int, pod bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if a, ok := f.links[ifindex]; ok && !defunct(a.link) {
		if a.pod != pod {
			if err := f.setPod(ifindex, pod); err != nil {
				return err
			}
			a.pod = pod
			f.links[ifindex] = a
		}
		return nil
	}
	if a, ok := f.links[ifindex]; ok {
		// The device it was attached to is gone and its index was given to a new one.
		_ = a.link.Close()
		delete(f.links, ifindex)
	}
	l, err := link.AttachTCX(link.TCXOptions{
		Interface: ifindex,
		Program:   f.objs.TwillFastpath,
		Attach:    ebpf.AttachTCXIngress,
		// Last: programs others attached (observability, another tool's) see the packet first.
		Anchor: link.Tail(),
	})
	if err != nil {
		return fmt.Errorf("attaching the fast path to ifindex %d (tcx ingress): %w", ifindex, err)
	}
	if err := f.setPod(ifindex, pod); err != nil {
		return errors.Join(err, l.Close())
	}
	f.links[ifindex] = attachment{link: l, pod: pod}
	return nil
}

// defunct says whether l's device is gone (the kernel then reports no interface).
func defunct(l link.Link) bool {
	info, err := l.Info()
	if err != nil {
		return false
	}
	tcx := info.TCX()
	return tcx != nil && tcx.Ifindex == 0
}

func (f *FastPath) setPod(ifindex int, pod bool) error {
	key := uint32(ifindex)
	if pod {
		if err := f.objs.PodLinks.Put(key, uint8(1)); err != nil {
			return fmt.Errorf("recording ifindex %d as a pod link: %w", ifindex, err)
		}
		return nil
	}
	if err := f.objs.PodLinks.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("forgetting pod link %d: %w", ifindex, err)
	}
	return nil
}

// Detach removes the program from the link with ifindex (gone links included: the kernel has
// detached it already, this releases the link).
func (f *FastPath) Detach(ifindex int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.links[ifindex]
	if !ok {
		return nil
	}
	delete(f.links, ifindex)
	return errors.Join(f.setPod(ifindex, false), a.link.Close())
}

// Attached returns the ifindexes the program is attached to.
func (f *FastPath) Attached() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]int, 0, len(f.links))
	for i := range f.links {
		out = append(out, i)
	}
	return out
}

// Stats reads the counters.
func (f *FastPath) Stats() (Stats, error) {
	var s Stats
	for i := range statCount {
		var perCPU []uint64
		if err := f.objs.Stats.Lookup(uint32(i), &perCPU); err != nil {
			return s, fmt.Errorf("reading fast path counter %s: %w", i, err)
		}
		for _, v := range perCPU {
			s[i] += v
		}
	}
	return s, nil
}

// Close detaches the program from every link and unloads it.
func (f *FastPath) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	for i, a := range f.links {
		errs = append(errs, a.link.Close())
		delete(f.links, i)
	}
	errs = append(errs, f.objs.Close())
	return errors.Join(errs...)
}
