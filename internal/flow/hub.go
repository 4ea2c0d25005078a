package flow

import (
	"context"
	"sync"
	"sync/atomic"
)

// DefaultRecent is how many recent events a Hub keeps unless told otherwise.
const DefaultRecent = 1024

// subscriberBuffer is how many events a subscriber may fall behind before it misses some.
const subscriberBuffer = 256

// Hub keeps the most recent drop events in a ring and passes every new one to its
// subscribers. Publishing never blocks: a subscriber that does not keep up misses events
// (counted in Missed), so a slow reader cannot hold up the receiver. Safe for concurrent use.
type Hub struct {
	mu     sync.Mutex
	ring   []DropEvent
	next   int  // where the next event goes
	filled bool // the ring has wrapped
	subs   map[chan DropEvent]struct{}

	published atomic.Uint64
	missed    atomic.Uint64
}

// NewHub returns a hub that keeps the last size events (DefaultRecent if size <= 0).
func NewHub(size int) *Hub {
	if size <= 0 {
		size = DefaultRecent
	}
	return &Hub{ring: make([]DropEvent, size), subs: map[chan DropEvent]struct{}{}}
}

// Publish records e and hands it to every subscriber that has room.
func (h *Hub) Publish(e DropEvent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ring[h.next] = e
	h.next = (h.next + 1) % len(h.ring)
	if h.next == 0 {
		h.filled = true
	}
	h.published.Add(1)
	for ch := range h.subs {
		select {
		case ch <- e:
		default:
			h.missed.Add(1)
		}
	}
}

// Recent returns the events kept, oldest first.
func (h *Hub) Recent() []DropEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.recentLocked()
}

func (h *Hub) recentLocked() []DropEvent {
	if !h.filled {
		return append([]DropEvent(nil), h.ring[:h.next]...)
	}
	return append(append([]DropEvent(nil), h.ring[h.next:]...), h.ring[:h.next]...)
}

// Subscribe returns a channel of the events published from now on, closed when ctx ends.
func (h *Hub) Subscribe(ctx context.Context) <-chan DropEvent {
	_, ch := h.subscribe(ctx, false)
	return ch
}

// SubscribeWithRecent is Subscribe that also returns the events kept so far, taken at the same
// moment, so that a reader sees every event once: the recent ones, then the live ones.
func (h *Hub) SubscribeWithRecent(ctx context.Context) ([]DropEvent, <-chan DropEvent) {
	return h.subscribe(ctx, true)
}

func (h *Hub) subscribe(ctx context.Context, withRecent bool) ([]DropEvent, <-chan DropEvent) {
	ch := make(chan DropEvent, subscriberBuffer)
	h.mu.Lock()
	var recent []DropEvent
	if withRecent {
		recent = h.recentLocked()
	}
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	go func() {
		<-ctx.Done()
		h.mu.Lock()
		delete(h.subs, ch)
		close(ch) // under the lock: Publish never sends on a closed channel
		h.mu.Unlock()
	}()
	return recent, ch
}

// Published counts the events published; Missed counts events subscribers did not take.
func (h *Hub) Published() uint64 { return h.published.Load() }
func (h *Hub) Missed() uint64    { return h.missed.Load() }
