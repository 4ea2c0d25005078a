package netlinkdp

import (
	"errors"

	"github.com/vishvananda/netlink"
)

// dumpAttempts bounds the retries of a netlink dump the kernel interrupted.
const dumpAttempts = 5

// consistentDump runs a netlink dump again when the kernel says it was interrupted: the table
// changed while it was read (pods come and go during a burst), so the list may be incomplete,
// and reconciling against an incomplete list would re-add or miss entries.
func consistentDump[T any](dump func() (T, error)) (T, error) {
	var (
		out T
		err error
	)
	for range dumpAttempts {
		if out, err = dump(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return out, err
}
