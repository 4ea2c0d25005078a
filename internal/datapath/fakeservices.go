package datapath

import (
	"context"
	"maps"
	"sync"
)

// FakeServices is a ServiceReconciler that keeps the services it was told to serve and every
// change it was given, so the agent's service loop is tested without root.
type FakeServices struct {
	mu      sync.Mutex
	served  map[ServiceKey]Service
	changes []ServiceChanges
	err     error
}

var _ ServiceReconciler = (*FakeServices)(nil)

// ApplyServices records ch and, unless an error is set, applies it to the served services.
func (f *FakeServices) ApplyServices(ctx context.Context, ch ServiceChanges) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.changes = append(f.changes, ch)
	if f.err != nil {
		return f.err
	}
	if ch.Full || f.served == nil {
		f.served = make(map[ServiceKey]Service)
	}
	for _, s := range ch.Set {
		f.served[s.Key] = s
	}
	for _, k := range ch.Removed {
		delete(f.served, k)
	}
	return nil
}

// SetErr makes the following applies fail with err (nil to succeed again).
func (f *FakeServices) SetErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

// Served returns a copy of what the fake serves now.
func (f *FakeServices) Served() map[ServiceKey]Service {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.served)
}

// Changes returns every change applied so far, oldest first.
func (f *FakeServices) Changes() []ServiceChanges {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]ServiceChanges(nil), f.changes...)
}
