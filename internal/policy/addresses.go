package policy

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/twill-net/twill/internal/datapath"
)

// addressIndex keeps the state's address map and named ports up to date as endpoints change,
// so that State copies them instead of working them out again from every endpoint: a pod
// change costs the pod's addresses and ports, not the cluster's.
//
// Should two pods claim one address (a pod deleted late), the first by namespace/name owns
// it, so the result does not depend on the order of events; only the owner's named ports
// count.
type addressIndex struct {
	claims  map[netip.Addr][]*endpointState
	entries map[netip.Addr]datapath.EndpointEntry
	owners  map[netip.Addr]*endpointState
	ports   map[string]*namedPortList
}

// namedPortList is one port name's entries, counted (one pod may declare a name twice) and
// kept sorted.
type namedPortList struct {
	counts map[datapath.NamedPortEntry]int
	sorted []datapath.NamedPortEntry
}

func newAddressIndex() addressIndex {
	return addressIndex{claims: map[netip.Addr][]*endpointState{}, entries: map[netip.Addr]datapath.EndpointEntry{},
		owners: map[netip.Addr]*endpointState{}, ports: map[string]*namedPortList{}}
}

// claim records es's addresses; unclaim forgets them. An endpoint is claimed while it is in
// the calculator, with the addresses and ports of es.ep at the time.
func (x *addressIndex) claim(es *endpointState) {
	for _, a := range es.ep.IPs {
		if !slices.Contains(x.claims[a], es) {
			x.claims[a] = append(x.claims[a], es)
		}
		x.elect(a)
	}
}

func (x *addressIndex) unclaim(es *endpointState) {
	for _, a := range es.ep.IPs {
		claims := slices.DeleteFunc(x.claims[a], func(o *endpointState) bool { return o == es })
		if len(claims) == 0 {
			delete(x.claims, a)
		} else {
			x.claims[a] = claims
		}
		x.elect(a)
	}
}

// elect gives address a to its first claimant, moving the named ports with it.
func (x *addressIndex) elect(a netip.Addr) {
	var owner *endpointState
	for _, es := range x.claims[a] {
		if owner == nil || comparePodRefs(es.ep.Ref(), owner.ep.Ref()) < 0 {
			owner = es
		}
	}
	if prev := x.owners[a]; prev != owner {
		if prev != nil {
			x.countPorts(prev, a, -1)
		}
		if owner != nil {
			x.countPorts(owner, a, 1)
		}
	}
	if owner == nil {
		delete(x.owners, a)
		delete(x.entries, a)
		return
	}
	x.owners[a] = owner
	x.entries[a] = entryOf(owner)
}

// refresh rewrites the entries es owns, after its identity changed.
func (x *addressIndex) refresh(es *endpointState) {
	for _, a := range es.ep.IPs {
		if x.owners[a] == es {
			x.entries[a] = entryOf(es)
		}
	}
}

func entryOf(es *endpointState) datapath.EndpointEntry {
	e := datapath.EndpointEntry{Pod: es.ep.Ref(), Node: es.ep.Node}
	if es.identity != nil {
		e.Identity = es.identity.id
	}
	return e
}

func (x *addressIndex) countPorts(es *endpointState, a netip.Addr, delta int) {
	for _, p := range es.ep.Ports {
		l := x.ports[p.Name]
		if l == nil {
			l = &namedPortList{counts: map[datapath.NamedPortEntry]int{}}
			x.ports[p.Name] = l
		}
		e := datapath.NamedPortEntry{Addr: a, Protocol: p.Protocol, Port: p.Port}
		before := l.counts[e]
		after := before + delta
		if after <= 0 {
			delete(l.counts, e)
		} else {
			l.counts[e] = after
		}
		i, found := slices.BinarySearchFunc(l.sorted, e, compareNamedPorts)
		switch {
		case after > 0 && !found:
			l.sorted = slices.Insert(l.sorted, i, e)
		case after <= 0 && found:
			l.sorted = slices.Delete(l.sorted, i, i+1)
		}
		if len(l.sorted) == 0 {
			delete(x.ports, p.Name)
		}
	}
}

func compareNamedPorts(a, b datapath.NamedPortEntry) int {
	return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port))
}
