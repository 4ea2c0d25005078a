package agent

import (
	"fmt"
	"net/netip"
	"reflect"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/twill-net/twill/internal/datapath"
)

// What happens to connections that are already established when a policy change stops
// allowing them. The datapath judges first packets only (conntrack passes the rest), so by
// default such connections keep going until they end, as with Calico and most iptables-based
// enforcers; the NetworkPolicy API leaves this open. "reset" deletes the conntrack entries of
// the pods whose policy may have changed, so their next packet is judged again as a first
// packet: allowed connections carry on (conntrack picks them up mid-stream), forbidden ones
// are dropped from then on.
const (
	EstablishedKeep  = "keep"
	EstablishedReset = "reset"
)

// conntrackResetter remembers what the last applied state decided on, to find the addresses
// whose verdicts a new state may change.
type conntrackResetter struct {
	nodeName string
	// delete removes conntrack entries of the addresses (a field so tests can watch it).
	delete func([]netip.Addr) (uint, error)

	seen       bool
	identities map[netip.Addr]datapath.Identity
	rules      policyRules
}

// policyRules is the part of a state that decides verdicts for every pod at once.
type policyRules struct {
	ingress, egress datapath.DirectionPolicy
	cidrs           map[datapath.SetName]datapath.CIDRSet
	namedPorts      map[string][]datapath.NamedPortEntry
	nodes           map[netip.Addr]string
}

func newConntrackResetter(nodeName string) *conntrackResetter {
	return &conntrackResetter{nodeName: nodeName, delete: deleteConntrackOf}
}

// affected returns the addresses whose established connections may have lost their allowance
// between the previous state and s: every local pod when the rules changed, else the pods
// whose identity changed (a label of theirs or of their namespace that a policy reads). A
// new identity joining a set only concerns pods that have no connection yet.
func (r *conntrackResetter) affected(s *datapath.PolicyState) []netip.Addr {
	// A deep copy: the calculator may reuse parts of one state in the next.
	c := s.Clone()
	rules := policyRules{c.Ingress, c.Egress, c.CIDRSets, c.NamedPorts, c.NodeAddresses}
	ids := make(map[netip.Addr]datapath.Identity, len(s.Endpoints))
	for a, e := range s.Endpoints {
		ids[a] = e.Identity
	}
	prevIDs, prevRules, seen := r.identities, r.rules, r.seen
	r.identities, r.rules, r.seen = ids, rules, true
	if !seen {
		return nil // the first state after a start: nothing was enforced before it by us
	}
	var out []netip.Addr
	if !reflect.DeepEqual(prevRules, rules) {
		for a, e := range s.Endpoints {
			if e.Node == r.nodeName {
				out = append(out, a)
			}
		}
		return out
	}
	for a, id := range ids {
		if old, ok := prevIDs[a]; ok && old != id {
			out = append(out, a)
		}
	}
	return out
}

// reset deletes the conntrack entries of the addresses s may have changed verdicts for.
func (r *conntrackResetter) reset(s *datapath.PolicyState) (uint, error) {
	addrs := r.affected(s)
	if len(addrs) == 0 {
		return 0, nil
	}
	return r.delete(addrs)
}

// deleteConntrackOf deletes, in this network namespace, every conntrack entry with one of
// addrs at either end: as original source, or anywhere in the reply tuple, which covers a
// service connection whose backend is the address (the original destination is the service).
func deleteConntrackOf(addrs []netip.Addr) (uint, error) {
	var total uint
	for _, fam := range []struct {
		family netlink.InetFamily
		is4    bool
	}{{unix.AF_INET, true}, {unix.AF_INET6, false}} {
		var filters []netlink.CustomConntrackFilter
		for _, a := range addrs {
			if a.Is4() != fam.is4 {
				continue
			}
			for _, field := range []netlink.ConntrackFilterType{netlink.ConntrackOrigSrcIP, netlink.ConntrackReplyAnyIP} {
				f := &netlink.ConntrackFilter{}
				if err := f.AddIP(field, a.AsSlice()); err != nil {
					return total, err
				}
				filters = append(filters, f)
			}
		}
		if len(filters) == 0 {
			continue
		}
		n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, fam.family, filters...)
		total += n
		if err != nil {
			return total, fmt.Errorf("delete conntrack entries of %d addresses: %w", len(addrs), err)
		}
	}
	return total, nil
}
