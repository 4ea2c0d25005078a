package policy

import (
	"maps"
	"slices"
	"strings"

	"github.com/twill-net/twill/internal/datapath"
)

// firstIdentity leaves room below for identities a datapath may reserve (host, world, ...).
const firstIdentity datapath.Identity = 256

// identity is one distinct set of relevant labels and the number standing for it.
type identity struct {
	id        datapath.Identity
	key       string
	labels    datapath.IdentityLabels
	endpoints int // how many endpoints have it; it is released at 0
}

// selectorState is an identity selector some policy uses and the identities it picks.
type selectorState struct {
	sel     identitySelector
	refs    int // how many policies use it
	members map[datapath.Identity]bool
	// sorted caches members in order and description the selector's text, for State: a
	// change touches a few selectors, and sorting and describing them all on every State
	// cost more than the change. sorted is valid while sortedValid holds (see setMember).
	sorted      []datapath.Identity
	sortedValid bool
	description string
}

// setMember adds or removes an identity, invalidating the sorted members.
func (st *selectorState) setMember(id datapath.Identity, member bool) {
	if member {
		st.members[id] = true
	} else {
		delete(st.members, id)
	}
	st.sortedValid = false
}

// sortedMembers returns the members in order, in a slice of the caller's.
func (st *selectorState) sortedMembers() []datapath.Identity {
	if !st.sortedValid {
		st.sorted, st.sortedValid = sortedIdentities(st.members), true
	}
	return slices.Clone(st.sorted)
}

// describe returns the selector's text, worked out once.
func (st *selectorState) describe() string {
	if st.description == "" {
		st.description = st.sel.describe()
	}
	return st.description
}

// identityLabels restricts an endpoint's labels to those some selector reads. Labels no
// policy reads would only multiply identities without changing any verdict.
func (c *Calculator) identityLabels(e *Endpoint) datapath.IdentityLabels {
	l := datapath.IdentityLabels{Namespace: e.Namespace, NamespaceLabels: map[string]string{}, PodLabels: map[string]string{}}
	for k, v := range c.namespaceLabels(e.Namespace) {
		if c.nsKeys[k] > 0 {
			l.NamespaceLabels[k] = v
		}
	}
	for k, v := range e.Labels {
		if c.podKeys[k] > 0 {
			l.PodLabels[k] = v
		}
	}
	return l
}

// namespaceLabels returns a namespace's labels with its name label, even before the
// namespace itself is known.
func (c *Calculator) namespaceLabels(name string) map[string]string {
	if l, ok := c.namespaces[name]; ok {
		return l
	}
	return map[string]string{NamespaceNameLabel: name}
}

func identityKey(l *datapath.IdentityLabels) string {
	var b strings.Builder
	b.WriteString(l.Namespace)
	for _, m := range []map[string]string{l.NamespaceLabels, l.PodLabels} {
		b.WriteByte('|')
		for _, k := range slices.Sorted(maps.Keys(m)) {
			// Keys and values cannot hold NUL, so the key is unambiguous.
			b.WriteString(k + "\x00" + m[k] + "\x00")
		}
	}
	return b.String()
}

// assignIdentity gives an endpoint the identity of its current relevant labels, allocating
// one when these labels are new and releasing its old one when it was the last holder.
func (c *Calculator) assignIdentity(es *endpointState) {
	l := c.identityLabels(&es.ep)
	key := identityKey(&l)
	if es.identity != nil && es.identity.key == key {
		return
	}
	id, ok := c.identities[key]
	if !ok {
		id = &identity{id: c.nextID, key: key, labels: l}
		c.nextID++
		c.identities[key] = id
		c.byID[id.id] = id
		for _, st := range c.selectors {
			if st.sel.matches(&id.labels) {
				st.setMember(id.id, true)
			}
		}
	}
	id.endpoints++
	c.releaseIdentity(es)
	es.identity = id
	c.addrs.refresh(es)
}

// releaseIdentity drops the endpoint's hold on its identity, deleting the identity (and its
// set memberships) when no endpoint has it any more.
func (c *Calculator) releaseIdentity(es *endpointState) {
	old := es.identity
	es.identity = nil
	if old == nil {
		return
	}
	old.endpoints--
	if old.endpoints > 0 {
		return
	}
	delete(c.identities, old.key)
	delete(c.byID, old.id)
	for _, st := range c.selectors {
		st.setMember(old.id, false)
	}
}

// useSelectors takes a reference on each selector of a policy, creating (and filling) the new
// ones. It reports whether the set of relevant label keys grew.
func (c *Calculator) useSelectors(sels map[datapath.SetName]identitySelector) (keysChanged bool) {
	for name, sel := range sels {
		st, ok := c.selectors[name]
		if !ok {
			st = &selectorState{sel: sel, members: map[datapath.Identity]bool{}}
			c.selectors[name] = st
			keysChanged = addKeys(c.podKeys, sel.pod.keys(), 1) || keysChanged
			keysChanged = addKeys(c.nsKeys, sel.nsSel.keys(), 1) || keysChanged
			for _, id := range c.byID {
				if sel.matches(&id.labels) {
					st.setMember(id.id, true)
				}
			}
		}
		st.refs++
	}
	return keysChanged
}

// dropSelectors releases a policy's references, deleting selectors no policy uses. It reports
// whether the set of relevant label keys shrank.
func (c *Calculator) dropSelectors(sels map[datapath.SetName]identitySelector) (keysChanged bool) {
	for name := range sels {
		st := c.selectors[name]
		if st == nil {
			continue
		}
		if st.refs--; st.refs > 0 {
			continue
		}
		delete(c.selectors, name)
		keysChanged = addKeys(c.podKeys, st.sel.pod.keys(), -1) || keysChanged
		keysChanged = addKeys(c.nsKeys, st.sel.nsSel.keys(), -1) || keysChanged
	}
	return keysChanged
}

// addKeys counts references to label keys; it reports whether a key appeared or vanished.
func addKeys(counts map[string]int, keys []string, delta int) (changed bool) {
	for _, k := range keys {
		before := counts[k]
		counts[k] = before + delta
		if counts[k] <= 0 {
			delete(counts, k)
		}
		changed = changed || (before == 0) != (counts[k] == 0)
	}
	return changed
}

// reidentify recomputes the identity of every endpoint after the relevant keys changed. An
// identity whose labels still describe some endpoint keeps its number; membership of a kept
// identity stays right because it depends only on its (unchanged) labels.
func (c *Calculator) reidentify(endpoints map[datapath.PodRef]*endpointState) {
	for _, ref := range slices.SortedFunc(maps.Keys(endpoints), comparePodRefs) {
		c.assignIdentity(endpoints[ref])
	}
}

func comparePodRefs(a, b datapath.PodRef) int {
	if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
		return c
	}
	return strings.Compare(a.Name, b.Name)
}
