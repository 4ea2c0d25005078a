package cniserver

import (
	"sync"

	"github.com/twill-net/twill/internal/ipam"
)

// handleLocks serialises operations on one attachment (an ADD racing its own DEL, a spooled DEL
// completing while the runtime retries) while different attachments proceed in parallel.
type handleLocks struct {
	mu sync.Mutex
	m  map[ipam.Handle]*handleLock
}

type handleLock struct {
	sync.Mutex
	refs int
}

// lock blocks until the handle is free and returns the function that frees it.
func (l *handleLocks) lock(h ipam.Handle) (unlock func()) {
	l.mu.Lock()
	if l.m == nil {
		l.m = make(map[ipam.Handle]*handleLock)
	}
	hl := l.m[h]
	if hl == nil {
		hl = &handleLock{}
		l.m[h] = hl
	}
	hl.refs++
	l.mu.Unlock()

	hl.Lock()
	return func() {
		hl.Unlock()
		l.mu.Lock()
		hl.refs--
		if hl.refs == 0 {
			delete(l.m, h)
		}
		l.mu.Unlock()
	}
}
