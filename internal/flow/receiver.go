package flow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"time"

	nflog "github.com/florianl/go-nflog/v2"
	"golang.org/x/sys/unix"

	"github.com/twill-net/twill/internal/datapath"
)

// copyRange is how much of each logged packet the receiver asks nflog for: as the datapath's
// snaplen, enough for the IPv6 header, a few extension headers and the ports.
const copyRange = 128

// Batching of log messages by the kernel: a burst costs one read per flushQueue messages, and
// an event is at most 100 ms late.
const (
	flushQueue           = 64
	flushAfterHundredths = 10
)

// receiveBuffer is the receiver's socket buffer: room for a burst of messages while the
// receiver is busy, beyond which the kernel drops messages (see Lost).
const receiveBuffer = 1 << 20

// ReceiverConfig is what a Receiver needs.
type ReceiverConfig struct {
	// Group is the nflog group the datapath logs drops to (nftdp.DropLogGroup).
	Group uint16
	// NetNS is an open file descriptor of the network namespace to receive in; 0: the calling
	// thread's (the agent's node namespace).
	NetNS int
	// Attribute turns a log prefix into the datapath's counter key.
	Attribute Attributor
	// Pods names the local pod of an address; nil: events name no pod.
	Pods PodResolver
	// Hub receives the events.
	Hub *Hub
	Log *slog.Logger
}

// Receiver reads the datapath's drop log and publishes a DropEvent per message.
type Receiver struct {
	cfg ReceiverConfig
	log *slog.Logger

	undecodable atomic.Uint64
	lost        atomic.Uint64 // times the kernel dropped messages because the socket was full
}

// NewReceiver returns a receiver ready to Run.
func NewReceiver(cfg ReceiverConfig) (*Receiver, error) {
	if cfg.Attribute == nil || cfg.Hub == nil {
		return nil, errors.New("flow receiver: Attribute and Hub are required")
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	return &Receiver{cfg: cfg, log: log}, nil
}

// Run binds the nflog group and publishes events until ctx ends. Only one socket of a
// network namespace can bind a group: a second receiver fails here.
func (r *Receiver) Run(ctx context.Context) error {
	nf, err := nflog.Open(&nflog.Config{
		NetNS:    r.cfg.NetNS,
		Group:    r.cfg.Group,
		Copymode: nflog.CopyPacket,
		Bufsize:  copyRange,
		// The kernel batches messages: it sends when flushQueue are waiting or flushAfter
		// flushAfterHundredths have passed since the first (its default waits a whole second).
		QThresh: flushQueue,
		Timeout: flushAfterHundredths,
	})
	if err != nil {
		return fmt.Errorf("open nflog: %w", err)
	}
	defer nf.Close()
	if err := nf.Con.SetReadBuffer(receiveBuffer); err != nil {
		r.log.Warn("drop events: cannot enlarge the nflog socket buffer", "error", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	failed := make(chan error, 1)
	err = nf.RegisterWithErrorFunc(ctx, func(a nflog.Attribute) int {
		r.handle(a)
		return 0
	}, func(err error) int {
		if ctx.Err() != nil {
			return 1
		}
		if errors.Is(err, unix.ENOBUFS) {
			if r.lost.Add(1) == 1 {
				r.log.Warn("drop events: the kernel dropped log messages (receiver too slow); events are missing")
			}
			return 0
		}
		var opErr interface{ Timeout() bool }
		if errors.As(err, &opErr) && opErr.Timeout() {
			return 0
		}
		select {
		case failed <- fmt.Errorf("receive nflog messages: %w", err):
		default:
		}
		cancel()
		return 1
	})
	if err != nil {
		return fmt.Errorf("bind nflog group %d: %w", r.cfg.Group, err)
	}
	r.log.Info("receiving drop events", "nflogGroup", r.cfg.Group)
	<-ctx.Done()
	select {
	case err := <-failed:
		return err
	default:
		return nil
	}
}

// Lost counts the times the kernel dropped log messages (a full socket: ENOBUFS, once per
// overflow, not per message); Undecodable counts messages the receiver could not read.
func (r *Receiver) Lost() uint64        { return r.lost.Load() }
func (r *Receiver) Undecodable() uint64 { return r.undecodable.Load() }

func (r *Receiver) handle(a nflog.Attribute) {
	if a.Prefix == nil || a.Payload == nil {
		r.undecodable.Add(1)
		return
	}
	p, err := decodePacket(*a.Payload)
	if err != nil {
		if r.undecodable.Add(1) == 1 {
			r.log.Warn("drop events: undecodable packet", "prefix", *a.Prefix, "error", err)
		}
		return
	}
	t := time.Now()
	if a.Timestamp != nil {
		t = *a.Timestamp
	}
	r.cfg.Hub.Publish(r.event(t, *a.Prefix, p))
}

// event attributes a decoded packet logged with prefix.
func (r *Receiver) event(t time.Time, prefix string, p packet) DropEvent {
	att := attribution{rule: prefix, reason: ReasonUnknown}
	if key, ok := r.cfg.Attribute(prefix); ok {
		att = attributionOf(key)
	}
	e := DropEvent{
		Time: t, Direction: att.direction,
		Source: p.src, Destination: p.dst, Protocol: protocolName(p.proto),
		SrcPort: p.srcPort, DstPort: p.dstPort, ICMPType: p.icmpType, ICMPCode: p.icmpCode,
		Tier: att.tier, Policy: att.policy, Rule: att.rule, Reason: att.reason,
	}
	// The local pod is the destination of an ingress drop and the source of an egress one;
	// a drop no direction owns (conntrack invalid) concerns whichever side is local.
	switch datapath.Direction(att.direction) {
	case datapath.Ingress:
		e.PodAddress, e.Peer = p.dst, p.src
		e.Pod = r.podName(p.dst)
	case datapath.Egress:
		e.PodAddress, e.Peer = p.src, p.dst
		e.Pod = r.podName(p.src)
	default:
		if e.Pod = r.podName(p.src); e.Pod != "" {
			e.PodAddress, e.Peer = p.src, p.dst
		} else if e.Pod = r.podName(p.dst); e.Pod != "" {
			e.PodAddress, e.Peer = p.dst, p.src
		}
	}
	return e
}

func (r *Receiver) podName(a netip.Addr) string {
	if r.cfg.Pods == nil {
		return ""
	}
	if pod, ok := r.cfg.Pods(a); ok {
		return pod.String()
	}
	return ""
}
