package nftsvc

import (
	"maps"
	"slices"
	"strings"
	"time"

	"sigs.k8s.io/knftables"
)

// objects is what one service owns in the table (or, for the skeleton, what every table has):
// its chains and affinity sets, and its elements in the global maps and sets. The reconciler
// keeps the objects of every service it has applied, so a change is the difference between a
// service's old and new objects: its cost depends on that service alone.
type objects struct {
	chains map[string]*chain
	sets   map[string]*affinity
	elems  map[string]map[string]element // global map or set -> joined key -> element
}

type chain struct {
	base    *baseChain // nil for a regular chain
	comment string
	rules   []string
}

type baseChain struct {
	typ      knftables.BaseChainType
	hook     knftables.BaseChainHook
	priority knftables.BaseChainPriority
}

// affinity is a dynamic set of client addresses with a timeout (ClientIP session affinity).
type affinity struct {
	typ     string
	timeout time.Duration
}

type element struct {
	key   []string
	value string // map value; empty for a set element
}

func newObjects() *objects {
	return &objects{chains: map[string]*chain{}, sets: map[string]*affinity{}, elems: map[string]map[string]element{}}
}

func (o *objects) chain(name, comment string) *chain {
	c := o.chains[name]
	if c == nil {
		c = &chain{comment: comment}
		o.chains[name] = c
	}
	return c
}

func (o *objects) element(set, value string, key ...string) {
	m := o.elems[set]
	if m == nil {
		m = map[string]element{}
		o.elems[set] = m
	}
	m[strings.Join(key, " . ")] = element{key: key, value: value}
}

// rule appends a rule made of the non-empty parts.
func (c *chain) rule(parts ...string) {
	var words []string
	for _, p := range parts {
		if p != "" {
			words = append(words, p)
		}
	}
	c.rules = append(c.rules, strings.Join(words, " "))
}

// global is the definition of one of the table's shared maps and sets.
type global struct {
	name  string
	typ   string // key type
	value string // map value type; empty for a set
}

func globals() []global {
	var g []global
	for _, f := range families {
		g = append(g,
			global{name: frontendMap(f), typ: f.addrType + " . inet_proto . inet_service", value: "verdict"},
			global{name: nodePortMap(f), typ: "inet_proto . inet_service", value: "verdict"},
			global{name: noEndpointSet(f), typ: f.addrType + " . inet_proto . inet_service"},
			global{name: noEndpointNodePortSet(f), typ: "inet_proto . inet_service"},
		)
	}
	return g
}

var globalIsMap = func() map[string]bool {
	m := map[string]bool{}
	for _, g := range globals() {
		m[g.name] = g.value != ""
	}
	return m
}()

func (g global) object() knftables.Object {
	if g.value != "" {
		return &knftables.Map{Name: g.name, Type: g.typ + " : " + g.value}
	}
	return &knftables.Set{Name: g.name, Type: g.typ}
}

func elementObject(set string, e element) *knftables.Element {
	if globalIsMap[set] {
		return &knftables.Element{Map: set, Key: e.key, Value: []string{e.value}}
	}
	return &knftables.Element{Set: set, Key: e.key}
}

func (c *chain) object(name string) *knftables.Chain {
	ch := &knftables.Chain{Name: name}
	if c.comment != "" {
		ch.Comment = knftables.PtrTo(c.comment)
	}
	if c.base != nil {
		ch.Type = knftables.PtrTo(c.base.typ)
		ch.Hook = knftables.PtrTo(c.base.hook)
		ch.Priority = knftables.PtrTo(c.base.priority)
		ch.Policy = knftables.PtrTo(knftables.AcceptPolicy)
	}
	return ch
}

func (a *affinity) object(name string) *knftables.Set {
	return &knftables.Set{Name: name, Type: a.typ, Flags: []knftables.SetFlag{knftables.DynamicFlag},
		Timeout: knftables.PtrTo(a.timeout)}
}

// rebuild writes a transaction that replaces whatever table there was by the skeleton and the
// services. Deleting and re-creating the table in one transaction is atomic: packets see the
// old table until the new one is complete, so no service is ever missing (and nothing left
// over from an older version or a crash survives).
func rebuild(tx *knftables.Transaction, skeleton *objects, services []*objects) {
	table := &knftables.Table{Comment: knftables.PtrTo(tableComment)}
	tx.Add(table)
	tx.Delete(&knftables.Table{})
	tx.Add(table)
	for _, g := range globals() {
		tx.Add(g.object())
	}
	all := append([]*objects{skeleton}, services...)
	// Sets and chains exist before any rule or verdict-map element refers to them.
	for _, o := range all {
		for _, name := range sortedKeys(o.sets) {
			tx.Add(o.sets[name].object(name))
		}
		for _, name := range sortedKeys(o.chains) {
			tx.Add(o.chains[name].object(name))
		}
	}
	for _, o := range all {
		for _, name := range sortedKeys(o.chains) {
			for _, r := range o.chains[name].rules {
				tx.Add(&knftables.Rule{Chain: name, Rule: r})
			}
		}
	}
	for _, o := range all {
		for _, set := range sortedKeys(o.elems) {
			elems := o.elems[set]
			for _, k := range sortedKeys(elems) {
				tx.Add(elementObject(set, elems[k]))
			}
		}
	}
}

// change is one service's objects before and after (nil when it did not exist / is gone).
type change struct{ old, new *objects }

// updateServices writes the transaction that turns the services' old objects into their new ones,
// touching nothing else. The steps run over all the changes at once, so an element one
// service gives up is deleted before another service claims it in the same transaction.
func updateServices(tx *knftables.Transaction, changes []change) {
	empty := newObjects()
	norm := func(o *objects) *objects {
		if o == nil {
			return empty
		}
		return o
	}
	// 1. New sets and chains, empty, so that anything below may refer to them.
	for _, c := range changes {
		old, cur := norm(c.old), norm(c.new)
		for _, name := range sortedKeys(cur.sets) {
			if old.sets[name] == nil {
				tx.Add(cur.sets[name].object(name))
			}
		}
		for _, name := range sortedKeys(cur.chains) {
			if old.chains[name] == nil {
				tx.Add(cur.chains[name].object(name))
			}
		}
	}
	// 2. Elements that go or change value, before the chains they point to go.
	for _, c := range changes {
		old, cur := norm(c.old), norm(c.new)
		for _, set := range sortedKeys(old.elems) {
			for _, k := range sortedKeys(old.elems[set]) {
				oe := old.elems[set][k]
				if e, keep := cur.elems[set][k]; !keep || e.value != oe.value {
					tx.Delete(elementObject(set, oe))
				}
			}
		}
	}
	// 3. Chains whose rules changed: flushed and rewritten whole.
	for _, c := range changes {
		old, cur := norm(c.old), norm(c.new)
		for _, name := range sortedKeys(cur.chains) {
			ch, o := cur.chains[name], old.chains[name]
			if o != nil && slices.Equal(o.rules, ch.rules) {
				continue
			}
			if o != nil {
				tx.Flush(&knftables.Chain{Name: name})
			}
			for _, r := range ch.rules {
				tx.Add(&knftables.Rule{Chain: name, Rule: r})
			}
		}
	}
	// 4. Elements that come or change value.
	for _, c := range changes {
		old, cur := norm(c.old), norm(c.new)
		for _, set := range sortedKeys(cur.elems) {
			for _, k := range sortedKeys(cur.elems[set]) {
				e := cur.elems[set][k]
				if oe, had := old.elems[set][k]; had && oe.value == e.value {
					continue
				}
				tx.Add(elementObject(set, e))
			}
		}
	}
	// 5. Chains and sets that go, now that nothing kept refers to them: chains emptied first,
	// as one removed chain may jump to another or name a removed set.
	for _, c := range changes {
		old, cur := norm(c.old), norm(c.new)
		for _, name := range sortedKeys(old.chains) {
			if cur.chains[name] == nil {
				tx.Flush(&knftables.Chain{Name: name})
			}
		}
	}
	for _, c := range changes {
		old, cur := norm(c.old), norm(c.new)
		for _, name := range sortedKeys(old.chains) {
			if cur.chains[name] == nil {
				tx.Delete(&knftables.Chain{Name: name})
			}
		}
		for _, name := range sortedKeys(old.sets) {
			if cur.sets[name] == nil {
				tx.Delete(&knftables.Set{Name: name})
			}
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
