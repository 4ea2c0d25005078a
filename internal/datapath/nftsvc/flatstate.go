package nftsvc

import (
	"cmp"
	"maps"
	"slices"
)

// flatState is what the reconciler keeps of the flat path beyond each service's objects:
// how many services use each membership set (and its rule), and each hairpin element, since
// endpoints may be shared.
type flatState struct {
	inUse    map[flatKey]int
	hairpins map[string]int    // element key -> services using it
	sets     map[string]string // element key -> hairpin set
}

func newFlatState() flatState {
	return flatState{inUse: map[flatKey]int{}, hairpins: map[string]int{}, sets: map[string]string{}}
}

// reset recounts from every service, for a rebuild; it returns the membership sets the table
// needs and the hairpin elements.
func (s *flatState) reset(services []*objects) ([]flatKey, map[string]string) {
	*s = newFlatState()
	for _, o := range services {
		for k := range o.flat {
			s.inUse[k]++
		}
		for key, set := range o.hairpin {
			s.hairpins[key]++
			s.sets[key] = set
		}
	}
	return sortedFlatKeys(s.inUse), maps.Clone(s.sets)
}

// update returns the ops an incremental change needs besides the services' own. Before
// them: the membership sets that come, and, when the sets in use change, the services
// chain rewritten with one rule per set (a handful of rules; the kernel's table check this
// costs walks only the chains of services off the flat path). After them: the sets that
// went, now that no rule names them, and hairpin elements that come or go.
func (s *flatState) update(changes []change) (before, after []op) {
	sets, hairpins := map[flatKey]int{}, map[string]int{}
	for _, c := range changes {
		if c.new != nil {
			for k := range c.new.flat {
				sets[k]++
			}
			for key, set := range c.new.hairpin {
				hairpins[key]++
				s.sets[key] = set
			}
		}
		if c.old != nil {
			for k := range c.old.flat {
				sets[k]--
			}
			for key := range c.old.hairpin {
				hairpins[key]--
			}
		}
	}
	rewrite := false
	for _, k := range sortedFlatKeys(sets) {
		was := s.inUse[k]
		now := was + sets[k]
		switch {
		case was == 0 && now > 0:
			before = append(before, op{kind: opAddSet, name: k.set(), set: k.def()})
			rewrite = true
		case was > 0 && now <= 0:
			after = append(after, op{kind: opDeleteSet, name: k.set()})
			rewrite = true
		}
		if now <= 0 {
			delete(s.inUse, k)
		} else {
			s.inUse[k] = now
		}
	}
	if rewrite {
		before = append(before, op{kind: opFlushChain, name: chainServices})
		for _, r := range skeleton().chains[chainServices].rules {
			before = append(before, op{kind: opAddRule, name: chainServices, rule: r})
		}
		for _, k := range sortedFlatKeys(s.inUse) {
			before = append(before, op{kind: opAddRule, name: chainServices, rule: k.rule()})
		}
	}
	for _, key := range sortedKeys(hairpins) {
		was := s.hairpins[key]
		now := was + hairpins[key]
		switch {
		case was == 0 && now > 0:
			after = append(after, hairpinOp(opAddElement, s.sets[key], key))
		case was > 0 && now <= 0:
			after = append(after, hairpinOp(opDeleteElement, s.sets[key], key))
		}
		if now <= 0 {
			delete(s.hairpins, key)
			delete(s.sets, key)
		} else {
			s.hairpins[key] = now
		}
	}
	return before, after
}

func sortedFlatKeys(keys map[flatKey]int) []flatKey {
	out := slices.Collect(maps.Keys(keys))
	slices.SortFunc(out, func(a, b flatKey) int {
		return cmp.Or(cmp.Compare(a.f.suffix, b.f.suffix), cmp.Compare(a.kind, b.kind), cmp.Compare(a.n, b.n))
	})
	return out
}
