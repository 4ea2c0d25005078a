package datapath

import (
	"context"
	"sync"
)

// PolicyReconciler makes the kernel enforce a PolicyState on this node's endpoints. An
// implementation must be idempotent, must leave policy in force while it updates (no moment
// where an old rule is gone and its replacement not yet there), and must touch only what
// twill owns (one nftables table, or twill's eBPF maps and programs).
//
// The state is read during the call and not kept: the caller may reuse or change it after
// ApplyPolicy returns.
type PolicyReconciler interface {
	ApplyPolicy(ctx context.Context, s *PolicyState) error
}

// PolicyCounterReader is implemented by policy datapaths that count verdicts.
type PolicyCounterReader interface {
	// PolicyCounters returns the packets and bytes each verdict counted since the datapath
	// last (re)built its rules, keyed by Attribution.ID() for rule verdicts and by the
	// Counter* keys below for the verdicts no rule makes.
	PolicyCounters(ctx context.Context) (map[string]PolicyCounter, error)
}

// PolicyCounter is what one verdict counter holds.
type PolicyCounter struct {
	Packets, Bytes uint64
}

// DefaultDenyCounter is the key of the counter of packets dropped in direction d because a
// NetworkPolicy isolates the local pod and none of their rules allows the packet.
func DefaultDenyCounter(d Direction) string { return "default-deny/" + string(d) }

// Counter keys of verdicts made outside the policy tiers.
const (
	// CounterOwnNode counts first packets from a pod's own node to the pod, always allowed.
	CounterOwnNode = "own-node/ingress"
	// CounterInvalid counts packets to or from a local pod that conntrack finds invalid (no
	// connection they could belong to), which are dropped.
	CounterInvalid = "conntrack-invalid"
)

// FakePolicy is a PolicyReconciler that records every state it is asked to apply, so the
// agent's control loops are tested without root. The states are deep copies: the caller may
// change its own afterwards, as the interface allows.
type FakePolicy struct {
	mu      sync.Mutex
	applied []*PolicyState
	err     error
}

var _ PolicyReconciler = (*FakePolicy)(nil)

// ApplyPolicy records a copy of s (even when failing, as a real reconciler may have applied
// part of it) and returns the error set with SetErr.
func (f *FakePolicy) ApplyPolicy(ctx context.Context, s *PolicyState) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = append(f.applied, s.Clone())
	return f.err
}

// SetErr makes the following applies return err (nil to succeed again).
func (f *FakePolicy) SetErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

// Applied returns every state applied so far, oldest first.
func (f *FakePolicy) Applied() []*PolicyState {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*PolicyState(nil), f.applied...)
}

// Last returns the most recently applied state, or nil before the first apply.
func (f *FakePolicy) Last() *PolicyState {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.applied) == 0 {
		return nil
	}
	return f.applied[len(f.applied)-1]
}
