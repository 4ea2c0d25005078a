package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/datapath/ebpfdp"
)

// The eBPF fast path's place in the agent: it is loaded once at start (the feature probe),
// attached to the underlay interface, twill's VXLAN device and every pod's host veth as they
// appear, and closed on shutdown. Attachments are BPF links held by the agent process, never
// pinned: an agent that stops or dies leaves nothing attached, and one that starts again
// attaches afresh to every link it finds, so restarts need no state.

// fastPathResync is how often the attachments are compared with the node's links, in case a
// link notification was lost (the netlink socket overflowed).
const fastPathResync = time.Minute

// fastPath keeps the fast path attached to the node's links.
type fastPath struct {
	fp       *ebpfdp.FastPath
	underlay int // ifindex of the node's underlay interface
	log      *slog.Logger
	once     sync.Once
}

// startFastPath loads and probes the fast path as cfg.Datapath asks: nil for nftables, and for
// auto where the kernel cannot run it (said in the log); an error only for ebpf.
func (a *Agent) startFastPath(underlayIndex int) (*fastPath, error) {
	mode := a.cfg.Datapath
	if mode == DatapathNFTables {
		return nil, nil
	}
	p, err := loadFastPath(underlayIndex, a.log)
	if err == nil {
		a.log.Info("eBPF fast path for established connections is on", "datapath", mode)
		return p, nil
	}
	if mode == DatapathEBPF {
		return nil, fmt.Errorf("--datapath=ebpf: this kernel cannot run the eBPF fast path (--datapath=nftables or auto runs without it): %w", err)
	}
	a.log.Info("eBPF fast path unavailable on this kernel; every packet takes the nftables path", "err", err)
	return nil, nil
}

func loadFastPath(underlayIndex int, log *slog.Logger) (*fastPath, error) {
	fp, err := ebpfdp.Load(log)
	if err != nil {
		return nil, err
	}
	p := &fastPath{fp: fp, underlay: underlayIndex, log: log}
	// Attaching to the underlay is the rest of the probe (tcx needs Linux 6.6).
	if err := fp.Attach(underlayIndex, false); err != nil {
		p.close()
		return nil, err
	}
	if err := ebpfdp.PrepareConntrack(); err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}

// close detaches everything and unloads the program; safe to call more than once.
func (p *fastPath) close() {
	p.once.Do(func() {
		if err := p.fp.Close(); err != nil {
			p.log.Warn("closing the eBPF fast path", "err", err)
		}
	})
}

// run attaches to links as they come and go until ctx is done, then detaches from all.
func (p *fastPath) run(ctx context.Context) error {
	defer p.close()
	for {
		err := p.watch(ctx)
		if ctx.Err() != nil {
			return nil
		}
		// A lost subscription (socket overflow): subscribe again, which lists every link anew.
		p.log.Warn("watching links for the eBPF fast path; subscribing again", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

// watch subscribes to link changes (listing the existing links first) and keeps the
// attachments in line; it returns when the subscription fails or ctx is done.
func (p *fastPath) watch(ctx context.Context) error {
	updates := make(chan netlink.LinkUpdate, 256)
	done := make(chan struct{})
	defer close(done)
	failed := make(chan error, 1)
	err := netlink.LinkSubscribeWithOptions(updates, done, netlink.LinkSubscribeOptions{
		ListExisting: true,
		ErrorCallback: func(err error) {
			select {
			case failed <- err:
			default:
			}
		},
	})
	if err != nil {
		return fmt.Errorf("subscribing to link changes: %w", err)
	}
	resync := time.NewTicker(fastPathResync)
	defer resync.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-failed:
			return err
		case u, ok := <-updates:
			if !ok {
				return errors.New("link subscription closed")
			}
			p.update(u)
		case <-resync.C:
			p.resync()
		}
	}
}

func (p *fastPath) update(u netlink.LinkUpdate) {
	idx := u.Link.Attrs().Index
	if u.Header.Type == unix.RTM_DELLINK {
		if err := p.fp.Detach(idx); err != nil {
			p.log.Warn("releasing the fast path of a deleted link", "link", u.Link.Attrs().Name, "err", err)
		}
		return
	}
	p.attach(u.Link)
}

// attach attaches to l if it is one of the links the fast path belongs on.
func (p *fastPath) attach(l netlink.Link) {
	attrs := l.Attrs()
	pod, ok := p.wanted(l)
	if !ok {
		return
	}
	if err := p.fp.Attach(attrs.Index, pod); err != nil {
		if errors.Is(err, unix.ENODEV) {
			// A link being deleted (its pod gone) still reports a last change before its deletion.
			p.log.Debug("link gone before the eBPF fast path attached", "link", attrs.Name)
			return
		}
		// Its packets take the normal path; the next resync tries again.
		p.log.Warn("attaching the eBPF fast path", "link", attrs.Name, "err", err)
	}
}

// wanted says whether the fast path belongs on l, and whether l is a pod's host veth.
func (p *fastPath) wanted(l netlink.Link) (pod, ok bool) {
	attrs := l.Attrs()
	switch {
	case attrs.Index == p.underlay, attrs.Name == datapath.VXLANDevice:
		return false, true
	case l.Type() == "veth" && isPodVeth(attrs.Name):
		return true, true
	}
	return false, false
}

// isPodVeth matches cniserver.HostVethName: "tw" and 11 hex digits.
func isPodVeth(name string) bool {
	if len(name) != 13 || !strings.HasPrefix(name, "tw") {
		return false
	}
	return strings.Trim(name[2:], "0123456789abcdef") == ""
}

// resync attaches to every wanted link and detaches from links gone.
func (p *fastPath) resync() {
	links, err := netlink.LinkList()
	if err != nil {
		p.log.Warn("listing links for the eBPF fast path", "err", err)
		return
	}
	present := map[int]bool{}
	for _, l := range links {
		if _, ok := p.wanted(l); ok {
			present[l.Attrs().Index] = true
			p.attach(l)
		}
	}
	for _, idx := range p.fp.Attached() {
		if !present[idx] {
			_ = p.fp.Detach(idx)
		}
	}
}

// fastPathCollector serves the fast path's counters as twill_fastpath_packets_total, by what
// happened to the packet (fast_local, fast_remote, or why it took the normal path).
type fastPathCollector struct {
	fp   *ebpfdp.FastPath
	desc *prometheus.Desc
}

func (p *fastPath) collector() prometheus.Collector {
	return fastPathCollector{fp: p.fp, desc: prometheus.NewDesc("twill_fastpath_packets_total",
		"Packets the eBPF fast path saw at ingress, by outcome: fast_local and fast_remote were forwarded by it, the others took the normal path and why.",
		[]string{"outcome"}, nil)}
}

func (c fastPathCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c fastPathCollector) Collect(ch chan<- prometheus.Metric) {
	s, err := c.fp.Stats()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	for i, v := range s {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(v), ebpfdp.Stat(i).String())
	}
}
