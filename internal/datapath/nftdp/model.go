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
}

type element struct {
	key   []string
	value string // map value; empty for a set element
}

type chainModel struct {
	hook    *knftables.BaseChainHook // nil for a regular chain
	comment string
	rules   []string
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

func (m *model) vmap(name, typ, comment string, interval bool) *setModel {
	s := m.set(name, typ, comment, interval)
	s.valueTyp = "verdict"
	return s
}

func (s *setModel) add(value string, key ...string) {
	s.elems[strings.Join(key, " . ")] = element{key: key, value: value}
}

func (m *model) chain(name, comment string) *chainModel {
	c := m.chains[name]
	if c == nil {
		c = &chainModel{comment: comment}
		m.chains[name] = c
	}
	return c
}

func (m *model) baseChain(hook knftables.BaseChainHook, comment string) *chainModel {
	c := m.chain(string(hook), comment)
	c.hook = &hook
	return c
}

// rule appends a rule made of the non-empty parts.
func (c *chainModel) rule(parts ...string) {
	var words []string
	for _, p := range parts {
		if p != "" {
			words = append(words, p)
		}
	}
	c.rules = append(c.rules, strings.Join(words, " "))
}

func (s *setModel) sameDefinition(o *setModel) bool {
	return s.typ == o.typ && s.valueTyp == o.valueTyp && s.interval == o.interval && s.comment == o.comment
}

func (c *chainModel) sameDefinition(o *chainModel) bool {
	return (c.hook == nil) == (o.hook == nil) && (c.hook == nil || *c.hook == *o.hook) && c.comment == o.comment
}

// Objects as knftables spells them.

func (m *model) counterObject(name string) *knftables.Counter {
	return &knftables.Counter{Name: name, Comment: knftables.PtrTo(safeComment(m.counters[name]))}
}

// safeComment fits text into an nft comment: nft's quoted strings know no escapes, and
// comments are short.
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

func (s *setModel) object(name string) knftables.Object {
	var flags []knftables.SetFlag
	if s.interval {
		flags = []knftables.SetFlag{knftables.IntervalFlag}
	}
	var comment *string
	if s.comment != "" {
		comment = knftables.PtrTo(safeComment(s.comment))
	}
	if s.valueTyp != "" {
		return &knftables.Map{Name: name, Type: s.typ + " : " + s.valueTyp, Flags: flags, Comment: comment}
	}
	return &knftables.Set{Name: name, Type: s.typ, Flags: flags, Comment: comment}
}

func (s *setModel) elementObject(name string, e element) *knftables.Element {
	if s.valueTyp != "" {
		return &knftables.Element{Map: name, Key: e.key, Value: []string{e.value}}
	}
	return &knftables.Element{Set: name, Key: e.key}
}

func (c *chainModel) object(name string) *knftables.Chain {
	ch := &knftables.Chain{Name: name}
	if c.comment != "" {
		ch.Comment = knftables.PtrTo(safeComment(c.comment))
	}
	if c.hook != nil {
		ch.Type = knftables.PtrTo(knftables.FilterType)
		ch.Hook = c.hook
		ch.Priority = knftables.PtrTo(knftables.FilterPriority)
		ch.Policy = knftables.PtrTo(knftables.AcceptPolicy)
	}
	return ch
}

// rebuild writes a transaction that replaces whatever table twill had by m. Deleting and
// re-creating the table in the same transaction is atomic: packets see the old table until
// the new one is complete, so policy is never missing (and nothing left over from an older
// version or a crash survives).
func (m *model) rebuild(tx *knftables.Transaction) {
	table := &knftables.Table{Comment: knftables.PtrTo(tableComment)}
	tx.Add(table)
	tx.Delete(&knftables.Table{})
	tx.Add(table)
	for _, name := range sortedKeys(m.counters) {
		tx.Add(m.counterObject(name))
	}
	for _, name := range sortedKeys(m.sets) {
		tx.Add(m.sets[name].object(name))
	}
	// Chains exist before any rule or verdict-map element refers to them.
	for _, name := range sortedKeys(m.chains) {
		tx.Add(m.chains[name].object(name))
	}
	for _, name := range sortedKeys(m.chains) {
		for _, r := range m.chains[name].rules {
			tx.Add(&knftables.Rule{Chain: name, Rule: r})
		}
	}
	for _, name := range sortedKeys(m.sets) {
		s := m.sets[name]
		for _, k := range sortedKeys(s.elems) {
			tx.Add(s.elementObject(name, s.elems[k]))
		}
	}
}

// update writes the transaction that turns the table from old into m, touching only what
// differs: set elements one by one, and chains whose rules changed (flushed and rewritten
// whole, in the same transaction). ok is false when an object changed its definition, which
// only a rebuild can do.
func (m *model) update(old *model, tx *knftables.Transaction) (ok bool) {
	for name, s := range m.sets {
		if o := old.sets[name]; o != nil && !o.sameDefinition(s) {
			return false
		}
	}
	for name, c := range m.chains {
		if o := old.chains[name]; o != nil && !o.sameDefinition(c) {
			return false
		}
	}

	// 1. New objects, empty, so that anything below may refer to them.
	for _, name := range sortedKeys(m.counters) {
		if _, ok := old.counters[name]; !ok {
			tx.Add(m.counterObject(name))
		}
	}
	for _, name := range sortedKeys(m.sets) {
		if old.sets[name] == nil {
			tx.Add(m.sets[name].object(name))
		}
	}
	for _, name := range sortedKeys(m.chains) {
		if old.chains[name] == nil {
			tx.Add(m.chains[name].object(name))
		}
	}
	// 2. Elements that go or change value, before the chains they may point to go. Only the
	// elements that differ are sorted (for a stable transaction): a table holds tens of
	// thousands, a change touches a few.
	var gone, come []elementRef
	for name, s := range m.sets {
		o := old.sets[name]
		if o == nil {
			for k := range s.elems {
				come = append(come, elementRef{name, k})
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
		tx.Delete(o.elementObject(r.set, o.elems[r.key]))
	}
	// 3. Chains whose rules changed.
	for _, name := range sortedKeys(m.chains) {
		c, o := m.chains[name], old.chains[name]
		if o != nil && slices.Equal(o.rules, c.rules) {
			continue
		}
		if o != nil {
			tx.Flush(&knftables.Chain{Name: name})
		}
		for _, r := range c.rules {
			tx.Add(&knftables.Rule{Chain: name, Rule: r})
		}
	}
	// 4. Elements that come or change value.
	for _, r := range come {
		s := m.sets[r.set]
		tx.Add(s.elementObject(r.set, s.elems[r.key]))
	}
	// 5. Objects that go, now that no rule or element refers to them: chains emptied first,
	// as one removed chain may jump to another.
	for _, name := range sortedKeys(old.chains) {
		if m.chains[name] == nil {
			tx.Flush(&knftables.Chain{Name: name})
		}
	}
	for _, name := range sortedKeys(old.sets) {
		if m.sets[name] == nil {
			tx.Delete(old.sets[name].object(name))
		}
	}
	for _, name := range sortedKeys(old.chains) {
		if m.chains[name] == nil {
			tx.Delete(&knftables.Chain{Name: name})
		}
	}
	for _, name := range sortedKeys(old.counters) {
		if _, keep := m.counters[name]; !keep {
			tx.Delete(&knftables.Counter{Name: name})
		}
	}
	return true
}

// elementRef names one element of a set.
type elementRef struct{ set, key string }

func sortElementRefs(refs []elementRef) {
	slices.SortFunc(refs, func(a, b elementRef) int {
		return cmp.Or(strings.Compare(a.set, b.set), strings.Compare(a.key, b.key))
	})
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
