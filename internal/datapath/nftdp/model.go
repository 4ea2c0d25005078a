package nftdp

import (
	"cmp"
	"maps"
	"slices"
	"strings"
	"unicode/utf8"

	"sigs.k8s.io/knftables"
)

// model is the whole content of twill's table as plain values: what a state renders to, and
// what the reconciler remembers having applied, so the next apply sends only the difference.
type model struct {
	counters map[string]string // counter name -> the key PolicyCounters reports it under
	sets     map[string]*setModel
	chains   map[string]*chainModel
}

// setModel is a set or, with a value type, a map.
type setModel struct {
	typ      string // key type, "a . b" for concatenations
	valueTyp string // map value type; empty for a set
	interval bool
	comment  string
	elems    map[string]element // by joined key
	// base, when not nil, is the set this one was derived from (see derive), and delta the
	// keys added, changed or removed since: an update from base looks at those keys alone.
	// A set is not changed once a render is done, so models may share it.
	base  *setModel
	delta map[string]struct{}
}

// derive returns a copy of s to change with put and remove, which remembers what changed:
// the large sets (every pod's identity, the flattened NetworkPolicy maps, named ports) change
// by a few elements an apply, and diffing them whole cost more than the rest of an apply.
func (s *setModel) derive() *setModel {
	d := *s
	d.elems = maps.Clone(s.elems)
	d.base, d.delta = s, map[string]struct{}{}
	// s was diffed against its own base when it was applied: dropping that link keeps the
	// chain of sets short (a derived set's base is only read by the next update).
	s.base, s.delta = nil, nil
	return &d
}

// put adds or replaces an element of a derived set.
func (s *setModel) put(joined string, e element) {
	s.elems[joined] = e
	s.delta[joined] = struct{}{}
}

// remove deletes an element of a derived set.
func (s *setModel) remove(joined string) {
	if _, ok := s.elems[joined]; ok {
		delete(s.elems, joined)
		s.delta[joined] = struct{}{}
	}
}

type element struct {
	key   []string
	value string // map value; empty for a set element
}

type chainModel struct {
	hook  *knftables.BaseChainHook // nil for a regular chain
	rules []*rule
}

func newModel() *model {
	return &model{counters: map[string]string{}, sets: map[string]*setModel{}, chains: map[string]*chainModel{}}
}

func (m *model) set(name, typ, comment string, interval bool) *setModel {
	s := m.sets[name]
	if s == nil {
		s = &setModel{typ: typ, interval: interval, comment: comment, elems: map[string]element{}}
		m.sets[name] = s
	}
	return s
}

func (s *setModel) add(value string, key ...string) {
	s.elems[strings.Join(key, " . ")] = element{key: key, value: value}
}

func (m *model) chain(name string) *chainModel {
	c := m.chains[name]
	if c == nil {
		c = &chainModel{}
		m.chains[name] = c
	}
	return c
}

func (m *model) baseChain(hook knftables.BaseChainHook) *chainModel {
	c := m.chain(string(hook))
	c.hook = &hook
	return c
}

// rule appends a rule.
func (c *chainModel) rule(r *rule) { c.rules = append(c.rules, r) }

func (s *setModel) sameDefinition(o *setModel) bool {
	return s.typ == o.typ && s.valueTyp == o.valueTyp && s.interval == o.interval && s.comment == o.comment
}

func (c *chainModel) sameDefinition(o *chainModel) bool {
	return (c.hook == nil) == (o.hook == nil) && (c.hook == nil || *c.hook == *o.hook)
}

// A transaction is planned as a list of ops, independent of how it reaches the kernel: a
// writer (netlink for the agent, knftables for the golden tests and the comparison with nft)
// sends the whole list as one transaction, which the kernel applies atomically.
//
// The table, its chains and its counters carry no comments: netlink (google/nftables) cannot
// write them, and both writers must make the same table. The attribution of a rule is the
// comment of its allow chain's rule and the key PolicyCounters reports its counter under.
type opKind uint8

const (
	opAddTable opKind = iota
	opDeleteTable
	opAddCounter
	opDeleteCounter
	opAddSet
	opDeleteSet
	opAddChain
	opFlushChain
	opDeleteChain
	opAddRule
	opAddElement
	opDeleteElement
)

type op struct {
	kind  opKind
	name  string      // the counter, set or chain the op is about
	set   *setModel   // sets and elements: the set's definition
	chain *chainModel // opAddChain
	rule  *rule       // opAddRule
	elem  element     // opAddElement, opDeleteElement
}

// rebuild plans a transaction that replaces whatever table twill had by m. Deleting and
// re-creating the table in the same transaction is atomic: packets see the old table until
// the new one is complete, so policy is never missing (and nothing left over from an older
// version or a crash survives). Adding the table first makes the delete succeed when there
// was none.
func (m *model) rebuild() []op {
	ops := []op{{kind: opAddTable}, {kind: opDeleteTable}, {kind: opAddTable}}
	for _, name := range sortedKeys(m.counters) {
		ops = append(ops, op{kind: opAddCounter, name: name})
	}
	for _, name := range sortedKeys(m.sets) {
		ops = append(ops, op{kind: opAddSet, name: name, set: m.sets[name]})
	}
	// Chains exist before any rule or verdict-map element refers to them.
	for _, name := range sortedKeys(m.chains) {
		ops = append(ops, op{kind: opAddChain, name: name, chain: m.chains[name]})
	}
	for _, name := range sortedKeys(m.chains) {
		for _, r := range m.chains[name].rules {
			ops = append(ops, op{kind: opAddRule, name: name, rule: r})
		}
	}
	for _, name := range sortedKeys(m.sets) {
		s := m.sets[name]
		for _, k := range sortedKeys(s.elems) {
			ops = append(ops, op{kind: opAddElement, name: name, set: s, elem: s.elems[k]})
		}
	}
	return ops
}

// update plans the transaction that turns the table from old into m, touching only what
// differs: set elements one by one, and chains whose rules changed (flushed and rewritten
// whole, in the same transaction). ok is false when an object changed its definition, which
// only a rebuild can do.
func (m *model) update(old *model) (ops []op, ok bool) {
	for name, s := range m.sets {
		if o := old.sets[name]; o != nil && !o.sameDefinition(s) {
			return nil, false
		}
	}
	for name, c := range m.chains {
		if o := old.chains[name]; o != nil && !o.sameDefinition(c) {
			return nil, false
		}
	}
	add := func(o op) { ops = append(ops, o) }

	// Only the names that need an op are sorted (for a stable transaction): a table holds
	// thousands of chains and counters, a change touches a few.
	newCounters := sortedWhere(m.counters, func(name string, _ string) bool { _, had := old.counters[name]; return !had })
	goneCounters := sortedWhere(old.counters, func(name string, _ string) bool { _, keep := m.counters[name]; return !keep })
	newSets := sortedWhere(m.sets, func(name string, _ *setModel) bool { return old.sets[name] == nil })
	goneSets := sortedWhere(old.sets, func(name string, _ *setModel) bool { return m.sets[name] == nil })
	newChains := sortedWhere(m.chains, func(name string, _ *chainModel) bool { return old.chains[name] == nil })
	goneChains := sortedWhere(old.chains, func(name string, _ *chainModel) bool { return m.chains[name] == nil })
	changedChains := sortedWhere(m.chains, func(name string, c *chainModel) bool {
		o := old.chains[name]
		return o == nil || (o != c && !sameRules(o.rules, c.rules))
	})

	// 1. New objects, empty, so that anything below may refer to them.
	for _, name := range newCounters {
		add(op{kind: opAddCounter, name: name})
	}
	for _, name := range newSets {
		add(op{kind: opAddSet, name: name, set: m.sets[name]})
	}
	for _, name := range newChains {
		add(op{kind: opAddChain, name: name, chain: m.chains[name]})
	}
	// 2. Elements that go or change value, before the chains they may point to go. Only the
	// elements that differ are sorted (for a stable transaction): a table holds tens of
	// thousands, a change touches a few.
	var gone, come []elementRef
	for name, s := range m.sets {
		o := old.sets[name]
		switch {
		case o == s: // the same set: nothing changed
			continue
		case o == nil:
			for k := range s.elems {
				come = append(come, elementRef{name, k})
			}
			continue
		case s.base == o:
			for k := range s.delta {
				oe, had := o.elems[k]
				e, has := s.elems[k]
				if had && (!has || e.value != oe.value) {
					gone = append(gone, elementRef{name, k})
				}
				if has && (!had || e.value != oe.value) {
					come = append(come, elementRef{name, k})
				}
			}
			continue
		}
		for k, oe := range o.elems {
			if e, keep := s.elems[k]; !keep || e.value != oe.value {
				gone = append(gone, elementRef{name, k})
			}
		}
		for k, e := range s.elems {
			if oe, had := o.elems[k]; !had || oe.value != e.value {
				come = append(come, elementRef{name, k})
			}
		}
	}
	sortElementRefs(gone)
	sortElementRefs(come)
	for _, r := range gone {
		o := old.sets[r.set]
		add(op{kind: opDeleteElement, name: r.set, set: o, elem: o.elems[r.key]})
	}
	// 3. Chains whose rules changed.
	for _, name := range changedChains {
		if old.chains[name] != nil {
			add(op{kind: opFlushChain, name: name})
		}
		for _, r := range m.chains[name].rules {
			add(op{kind: opAddRule, name: name, rule: r})
		}
	}
	// 4. Elements that come or change value.
	for _, r := range come {
		s := m.sets[r.set]
		add(op{kind: opAddElement, name: r.set, set: s, elem: s.elems[r.key]})
	}
	// 5. Objects that go, now that no rule or element refers to them: chains emptied first,
	// as one removed chain may jump to another.
	for _, name := range goneChains {
		add(op{kind: opFlushChain, name: name})
	}
	for _, name := range goneSets {
		add(op{kind: opDeleteSet, name: name, set: old.sets[name]})
	}
	for _, name := range goneChains {
		add(op{kind: opDeleteChain, name: name})
	}
	for _, name := range goneCounters {
		add(op{kind: opDeleteCounter, name: name})
	}
	return ops, true
}

// elementRef names one element of a set.
type elementRef struct{ set, key string }

func sortElementRefs(refs []elementRef) {
	slices.SortFunc(refs, func(a, b elementRef) int {
		return cmp.Or(strings.Compare(a.set, b.set), strings.Compare(a.key, b.key))
	})
}

// sortedWhere returns the keys of m for which keep holds, sorted.
func sortedWhere[V any](m map[string]V, keep func(string, V) bool) []string {
	var out []string
	for k, v := range m {
		if keep(k, v) {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}

// safeComment fits text into an nft comment: nft's quoted strings know no escapes, and
// comments are short. Both writers write comments through it.
func safeComment(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '"' || r == '\\' || r < ' ' {
			return '\''
		}
		return r
	}, s)
	for len(s) > knftables.CommentLengthMax {
		_, size := utf8.DecodeLastRuneInString(s)
		s = s[:len(s)-size]
	}
	return s
}
