package netcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"
)

// ErrNotFound means the DNS said the name does not exist (NXDOMAIN, or no address of it).
var ErrNotFound = errors.New("name not found")

// ResolveOptions tune a lookup.
type ResolveOptions struct {
	Timeout time.Duration
	// Server (ip:port), when set, receives every query in place of the nameservers of
	// /etc/resolv.conf, whose search list and options still apply.
	Server string
}

// Resolve looks name up as a pod's program would: Go's own resolver (never the C library's),
// reading /etc/resolv.conf, so the kubelet's nameserver, search list and ndots apply. It
// returns the addresses, sorted. Its errors wrap ErrNotFound or ErrTimeout when they are one of
// them.
func Resolve(ctx context.Context, name string, o ResolveOptions) ([]netip.Addr, error) {
	if o.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Timeout)
		defer cancel()
	}
	r := &net.Resolver{PreferGo: true}
	if o.Server != "" {
		r.Dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, o.Server)
		}
	}
	addrs, err := r.LookupNetIP(ctx, "ip", name)
	if err != nil {
		return nil, fmt.Errorf("resolving %s: %w", name, classifyDNS(ctx, err))
	}
	for i, a := range addrs {
		addrs[i] = a.Unmap()
	}
	slices.SortFunc(addrs, func(a, b netip.Addr) int { return a.Compare(b) })
	return slices.Compact(addrs), nil
}

// classifyDNS wraps err with ErrNotFound or ErrTimeout when it is one of them.
func classifyDNS(ctx context.Context, err error) error {
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	case errors.As(err, &dnsErr) && dnsErr.IsTimeout, errors.Is(err, context.DeadlineExceeded), ctx.Err() != nil:
		return fmt.Errorf("%w: %w", ErrTimeout, err)
	}
	return err
}
