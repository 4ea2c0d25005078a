package nftdp

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/twill-net/twill/internal/datapath"
)

// renderCache keeps, from one render to the next, the parts of the table that are costly to
// work out and that a change rarely touches, so that the work of an apply follows what
// changed rather than the size of the cluster:
//
//   - the names of each rule's objects (a hash of its attribution), and
//   - the flattened NetworkPolicy elements of each local pod: what a pod's rules allow only
//     changes when the pod's identity or named ports change, when the direction's rules
//     change, or when a set those rules name for it gains or loses members.
//
// It is a cache of a pure function of the state: it never depends on what the kernel holds,
// so a failed transaction does not invalidate it. The reconciler's lock guards it.
type renderCache struct {
	names map[datapath.Attribution]ruleNames

	flat map[flatKey]*podFlat
	// What the flattened elements were computed from: the NetworkPolicy rules of each
	// direction, and the members of every identity and CIDR set.
	rules      map[datapath.Direction][]datapath.Rule
	identities map[datapath.SetName][]datapath.Identity
	cidrs      map[datapath.SetName][]netip.Prefix

	// Set during a render: which of the above changed since the previous render.
	rulesChanged map[datapath.Direction]bool
	setsChanged  map[datapath.SetName]bool
	usedNames    map[datapath.Attribution]ruleNames
	usedFlat     map[flatKey]*podFlat

	// reused holds the large sets of the last render (render_reuse.go).
	reused reusedSets
}

// ruleNames are the names of one rule's objects.
type ruleNames struct {
	id      string // Attribution.ID()
	allow   string // its allow chain
	counter string // its counter
	// allowChain is the allow chain's content, one rule: count, return. Models share it (a
	// chain is not changed once rendered).
	allowChain *chainModel
}

type flatKey struct {
	d    datapath.Direction
	f    string // family suffix
	addr netip.Addr
}

// podFlat is one local pod's flattened elements and what they were computed from.
type podFlat struct {
	identity datapath.Identity
	ports    string // the pod's named ports, as resolvePorts reads them
	read     []datapath.SetName
	// rules are the pod's rules (those whose subject holds it), in order: when a policy
	// changes, only pods whose rules differ are flattened again.
	rules []datapath.Rule
	elems []flatElement
	// chains are the port-range chains its idrange elements point to, by name.
	chains map[string]*chainModel
}

// flatElement is one element of one of the five NetworkPolicy maps.
type flatElement struct {
	kind   string // idport, idrange, id, netport or net
	joined string // the key as the model indexes it
	e      element
}

func newRenderCache() *renderCache {
	return &renderCache{names: map[datapath.Attribution]ruleNames{}, flat: map[flatKey]*podFlat{}}
}

// begin compares the state's inputs with those of the previous render.
func (c *renderCache) begin(s *datapath.PolicyState) {
	c.rulesChanged = map[datapath.Direction]bool{}
	for _, d := range []datapath.Direction{datapath.Ingress, datapath.Egress} {
		old, ok := c.rules[d]
		c.rulesChanged[d] = !ok || !slices.EqualFunc(old, s.Rules(d).NetworkPolicy, sameRule)
	}
	c.setsChanged = map[datapath.SetName]bool{}
	for name, set := range s.IdentitySets {
		if old, ok := c.identities[name]; !ok || !slices.Equal(old, set.Members) {
			c.setsChanged[name] = true
		}
	}
	for name := range c.identities {
		if _, ok := s.IdentitySets[name]; !ok {
			c.setsChanged[name] = true
		}
	}
	for name, set := range s.CIDRSets {
		if old, ok := c.cidrs[name]; !ok || !slices.Equal(old, set.Prefixes) {
			c.setsChanged[name] = true
		}
	}
	for name := range c.cidrs {
		if _, ok := s.CIDRSets[name]; !ok {
			c.setsChanged[name] = true
		}
	}
	c.usedNames = make(map[datapath.Attribution]ruleNames, len(c.names))
	c.usedFlat = make(map[flatKey]*podFlat, len(c.flat))
}

// end keeps what this render used and the inputs it was computed from. Only what changed is
// copied again.
func (c *renderCache) end(s *datapath.PolicyState) {
	c.names, c.usedNames = c.usedNames, nil
	c.flat, c.usedFlat = c.usedFlat, nil
	if c.rules == nil {
		c.rules = map[datapath.Direction][]datapath.Rule{}
		c.identities, c.cidrs = map[datapath.SetName][]datapath.Identity{}, map[datapath.SetName][]netip.Prefix{}
	}
	for d, changed := range c.rulesChanged {
		if changed {
			c.rules[d] = cloneRules(s.Rules(d).NetworkPolicy)
		}
	}
	for name := range c.setsChanged {
		delete(c.identities, name)
		delete(c.cidrs, name)
		if set, ok := s.IdentitySets[name]; ok {
			c.identities[name] = slices.Clone(set.Members)
		}
		if set, ok := s.CIDRSets[name]; ok {
			c.cidrs[name] = slices.Clone(set.Prefixes)
		}
	}
}

// ruleNames returns the names of a rule's objects, hashed once per rule.
func (c *renderCache) ruleNames(a datapath.Attribution) ruleNames {
	n, ok := c.usedNames[a]
	if ok {
		return n
	}
	if n, ok = c.names[a]; !ok {
		n.id = a.ID()
		hash := shortHash(n.id)
		n.allow, n.counter = allowChain(hash), ruleCounter(hash)
		r := newRule().counter(n.counter).ret()
		r.comment = n.id
		n.allowChain = &chainModel{rules: []*rule{r}}
	}
	c.usedNames[a] = n
	return n
}

// podFlat returns the cached elements of a local pod, or nil when they must be computed.
// When the direction's rules changed, indexes are the pod's rules in all.
func (c *renderCache) podFlat(k flatKey, identity datapath.Identity, ports string, all []datapath.Rule, indexes []int) *podFlat {
	pf := c.flat[k]
	if pf == nil || pf.identity != identity || pf.ports != ports {
		return nil
	}
	if c.rulesChanged[k.d] {
		if len(indexes) != len(pf.rules) {
			return nil
		}
		for i, idx := range indexes {
			if !sameRule(all[idx], pf.rules[i]) {
				return nil
			}
		}
	}
	for _, n := range pf.read {
		if c.setsChanged[n] {
			return nil
		}
	}
	c.usedFlat[k] = pf
	return pf
}

func (c *renderCache) storeFlat(k flatKey, pf *podFlat) { c.usedFlat[k] = pf }

// sameRule compares two rules with everything that shapes their elements.
func sameRule(a, b datapath.Rule) bool {
	return a.Attribution == b.Attribution && a.Priority == b.Priority && a.Subject == b.Subject &&
		a.AnyPeer == b.AnyPeer && a.AnyPort == b.AnyPort && a.Note == b.Note &&
		slices.Equal(a.Peers, b.Peers) && slices.Equal(a.Ports, b.Ports)
}

func cloneRules(rules []datapath.Rule) []datapath.Rule {
	out := slices.Clone(rules)
	for i := range out {
		out[i] = cloneRule(out[i])
	}
	return out
}

// cloneRule copies a rule deeply: the state is the caller's once ApplyPolicy returns.
func cloneRule(r datapath.Rule) datapath.Rule {
	r.Peers = slices.Clone(r.Peers)
	r.Ports = slices.Clone(r.Ports)
	return r
}

// namedPortsOf spells the named ports the state gives addr, for the cache's comparison.
func (b *builder) namedPortsOf(addr netip.Addr) string {
	var sb strings.Builder
	for _, name := range b.namedPortNames {
		for _, e := range b.namedPorts[name][addr] {
			sb.WriteString(name)
			sb.WriteByte('/')
			sb.WriteString(strconv.Itoa(int(e.Protocol)))
			sb.WriteByte('/')
			sb.WriteString(strconv.Itoa(int(e.Port)))
			sb.WriteByte(' ')
		}
	}
	return sb.String()
}
