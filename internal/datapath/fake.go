package datapath

import (
	"context"
	"sync"
)

// FakeRoutes is a RouteReconciler that records every state it is asked to apply, so the
// agent's control loops are tested without root. Set Err to make the next applies fail.
type FakeRoutes struct {
	mu      sync.Mutex
	applied []RouteState
	err     error
}

var _ RouteReconciler = (*FakeRoutes)(nil)

// ApplyRoutes records s (even when failing, as a real reconciler may have applied part of it)
// and returns the error set with SetErr.
func (f *FakeRoutes) ApplyRoutes(ctx context.Context, s RouteState) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = append(f.applied, s)
	return f.err
}

// SetErr makes the following applies return err (nil to succeed again).
func (f *FakeRoutes) SetErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

// Applied returns every state applied so far, oldest first.
func (f *FakeRoutes) Applied() []RouteState {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]RouteState(nil), f.applied...)
}

// Last returns the most recently applied state; ok is false before the first apply.
func (f *FakeRoutes) Last() (s RouteState, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.applied) == 0 {
		return s, false
	}
	return f.applied[len(f.applied)-1], true
}
