package nftdp

import (
	"net/netip"
	"strconv"

	"github.com/twill-net/twill/internal/datapath"
)

// The sets that grow with the cluster (every pod's identity, the pods declaring a named
// port, the flattened NetworkPolicy maps) are not rendered afresh on every apply: the render
// cache keeps the last ones with what they were made from, and a render reuses a set whose
// inputs did not change, or derives it from the last one by the elements that did (see
// setModel.derive), so that both the render and the diff cost what changed.

// reusedSets is what the render cache keeps of those sets.
type reusedSets struct {
	// ids: the identity map of each family, and every address's identity in them.
	ids  map[string]*setModel
	idOf map[netip.Addr]datapath.Identity
	// named: each named-port set and the entries it holds.
	named      map[string]*setModel
	namedInput map[string]map[datapath.NamedPortEntry]bool
	// np: each direction and family's NetworkPolicy maps, and the pods' elements in them.
	np map[npKey]*npMaps
}

type npKey struct {
	d datapath.Direction
	f string
}

type npMaps struct {
	maps map[string]*setModel // by kind
	pods map[netip.Addr]*podFlat
}

// identityMaps renders ids4 and ids6: every pod address of the cluster to its identity.
func (b *builder) identityMaps() {
	c := &b.cache.reused
	fresh := c.ids == nil
	var changed []netip.Addr
	if !fresh {
		for addr, ep := range b.s.Endpoints {
			if id, ok := c.idOf[addr]; !ok || id != ep.Identity {
				changed = append(changed, addr)
			}
		}
		if len(b.s.Endpoints) != len(c.idOf)+countNew(changed, c.idOf) {
			for addr := range c.idOf {
				if _, ok := b.s.Endpoints[addr]; !ok {
					changed = append(changed, addr)
				}
			}
		}
	}
	if fresh {
		c.ids, c.idOf = map[string]*setModel{}, make(map[netip.Addr]datapath.Identity, len(b.s.Endpoints))
		for _, f := range families {
			s := &setModel{typ: f.addrType, valueTyp: "mark", comment: "pod address to identity, every pod of the cluster",
				elems: map[string]element{}}
			c.ids[f.suffix] = s
		}
		for addr, ep := range b.s.Endpoints {
			a := addr.String()
			c.ids[familyOf(addr).suffix].elems[a] = element{key: []string{a}, value: identityValue(ep.Identity)}
			c.idOf[addr] = ep.Identity
		}
	} else if len(changed) > 0 {
		derived := map[string]*setModel{}
		for _, addr := range changed {
			f := familyOf(addr).suffix
			if derived[f] == nil {
				derived[f] = c.ids[f].derive()
				c.ids[f] = derived[f]
			}
			a := addr.String()
			if ep, ok := b.s.Endpoints[addr]; ok {
				derived[f].put(a, element{key: []string{a}, value: identityValue(ep.Identity)})
				c.idOf[addr] = ep.Identity
			} else {
				derived[f].remove(a)
				delete(c.idOf, addr)
			}
		}
	}
	for _, f := range families {
		b.m.sets[identityMap(f)] = c.ids[f.suffix]
	}
}

// countNew counts the addresses of changed that old does not hold: with it, the number of
// endpoints tells whether any address went, without a second pass in the common case.
func countNew(changed []netip.Addr, old map[netip.Addr]datapath.Identity) int {
	n := 0
	for _, a := range changed {
		if _, ok := old[a]; !ok {
			n++
		}
	}
	return n
}

// namedPortSet renders every (address . protocol . port) of pods declaring a port name.
func (b *builder) namedPortSet(port string, f family) string {
	name := namedPortSet(port, f)
	if b.m.sets[name] != nil {
		return name
	}
	c := &b.cache.reused
	if c.named == nil {
		c.named, c.namedInput = map[string]*setModel{}, map[string]map[datapath.NamedPortEntry]bool{}
	}
	want := map[datapath.NamedPortEntry]bool{}
	for _, e := range b.s.NamedPorts[port] {
		if familyOf(e.Addr) == f {
			want[e] = true
		}
	}
	key := func(e datapath.NamedPortEntry) (string, element) {
		k := []string{e.Addr.String(), protocolName(e.Protocol), strconv.Itoa(int(e.Port))}
		return k[0] + " . " + k[1] + " . " + k[2], element{key: k}
	}
	old, had := c.named[name], c.namedInput[name]
	var set *setModel
	if old == nil {
		set = &setModel{typ: f.addrType + " . inet_proto . inet_service", comment: "pods' ports named " + port,
			elems: make(map[string]element, len(want))}
		for e := range want {
			k, el := key(e)
			set.elems[k] = el
		}
	} else {
		for e := range had {
			if !want[e] {
				if set == nil {
					set = old.derive()
				}
				k, _ := key(e)
				set.remove(k)
			}
		}
		for e := range want {
			if !had[e] {
				if set == nil {
					set = old.derive()
				}
				set.put(key(e))
			}
		}
		if set == nil {
			set = old
		}
	}
	c.named[name], c.namedInput[name] = set, want
	b.m.sets[name] = set
	return name
}

// npMapsOf renders the NetworkPolicy maps of one direction and family from the local pods'
// flattened elements: the last render's maps when no pod's elements changed, else derived
// from them by the pods whose elements did.
func (b *builder) npMapsOf(d datapath.Direction, f family, pods map[netip.Addr]*podFlat) map[string]*setModel {
	c := &b.cache.reused
	if c.np == nil {
		c.np = map[npKey]*npMaps{}
	}
	k := npKey{d, f.suffix}
	prev := c.np[k]
	kinds := npMapKinds(d, f)
	if prev == nil {
		prev = &npMaps{maps: map[string]*setModel{}}
		for kind, def := range kinds {
			prev.maps[kind] = &setModel{typ: def.typ, valueTyp: "verdict", interval: def.interval, elems: map[string]element{}}
		}
		for _, pf := range pods {
			for _, e := range pf.elems {
				prev.maps[e.kind].elems[e.joined] = e.e
			}
		}
		prev.pods = pods
		c.np[k] = prev
		return prev.maps
	}
	next := &npMaps{maps: map[string]*setModel{}, pods: pods}
	for kind, s := range prev.maps {
		next.maps[kind] = s
	}
	derived := map[string]bool{}
	edit := func(kind string) *setModel {
		if !derived[kind] {
			derived[kind] = true
			next.maps[kind] = prev.maps[kind].derive()
		}
		return next.maps[kind]
	}
	for addr, old := range prev.pods {
		if pf := pods[addr]; pf != old {
			for _, e := range old.elems {
				edit(e.kind).remove(e.joined)
			}
		}
	}
	for addr, pf := range pods {
		if old := prev.pods[addr]; pf != old {
			for _, e := range pf.elems {
				edit(e.kind).put(e.joined, e.e)
			}
		}
	}
	c.np[k] = next
	return next.maps
}

type npMapDef struct {
	typ      string
	interval bool
}

func npMapKinds(d datapath.Direction, f family) map[string]npMapDef {
	return map[string]npMapDef{
		"idport":  {f.addrType + " . mark . inet_proto . inet_service", false},
		"idrange": {f.addrType + " . mark . inet_proto", false},
		"id":      {f.addrType + " . mark", false},
		"netport": {f.addrType + " . " + f.addrType + " . inet_proto . inet_service", true},
		"net":     {f.addrType + " . " + f.addrType, true},
	}
}
