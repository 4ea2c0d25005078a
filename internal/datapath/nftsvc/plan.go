package nftsvc

import (
	"slices"
	"strings"
	"time"
)

// A transaction is planned as a list of ops, independent of how it reaches the kernel: a
// writer (netlink for the agent, knftables for the golden tests and the comparison with
// nft) sends the whole list as one transaction, which the kernel applies atomically.
type opKind uint8

const (
	opAddTable opKind = iota
	opDeleteTable
	opAddSet
	opAddChain
	opAddRule
	opAddElement
	opDeleteElement
	opFlushChain
	opDeleteChain
	opDeleteSet
)

type op struct {
	kind opKind
	name string  // the chain or set the op is about
	set  *setDef // opAddSet
	// opAddChain: the chain's definition (hook, if any); opAddRule: the rule.
	chain *chain
	rule  *rule
	elem  element // opAddElement, opDeleteElement
}

// setDef defines a set or map.
type setDef struct {
	fields  []string // key type, one nft type name per concatenated field
	isMap   bool     // a verdict map
	data    []string // a map to data: its type, like fields
	typeof  string   // nft's definition when its types cannot say it (a numgen in the key)
	timeout time.Duration
}

func (g global) def() *setDef {
	return &setDef{fields: strings.Split(g.typ, " . "), isMap: g.value != ""}
}

func (a *affinity) def() *setDef { return &setDef{fields: []string{a.typ}, timeout: a.timeout} }

var globalDefs = func() map[string]*setDef {
	m := flatGlobals()
	for _, g := range globals() {
		m[g.name] = g.def()
	}
	return m
}()

// defOf is the definition of a set that holds elements the reconciler writes.
func defOf(set string) *setDef {
	if d := globalDefs[set]; d != nil {
		return d
	}
	if k, ok := parseFlatSet(set); ok {
		return k.def()
	}
	return nil
}

// rebuild plans the transaction that replaces whatever table there was by the skeleton and
// the services. Deleting and re-creating the table in one transaction is atomic: packets see
// the old table until the new one is complete, so no service is ever missing (and nothing
// left over from an older version or a crash survives). Adding the table first makes the
// delete succeed when there was none.
func rebuild(skeleton *objects, services []*objects, flat []flatKey, hairpins map[string]string) []op {
	all := append([]*objects{skeleton}, services...)
	// Sized at once: a Full of 10,000 services is some 50,000 ops, and growing the list by
	// doubling copied it several times over.
	size := 3 + len(globalDefs) + 2*len(flat) + len(hairpins)
	for _, o := range all {
		size += len(o.sets) + len(o.chains)
		for _, c := range o.chains {
			size += len(c.rules)
		}
		for _, elems := range o.elems {
			size += len(elems)
		}
	}
	ops := make([]op, 0, size)
	ops = append(ops, op{kind: opAddTable}, op{kind: opDeleteTable}, op{kind: opAddTable})
	for _, g := range globals() {
		ops = append(ops, op{kind: opAddSet, name: g.name, set: g.def()})
	}
	for _, name := range sortedKeys(flatGlobals()) {
		ops = append(ops, op{kind: opAddSet, name: name, set: globalDefs[name]})
	}
	for _, k := range flat {
		ops = append(ops, op{kind: opAddSet, name: k.set(), set: k.def()})
	}
	// Sets and chains exist before any rule or verdict-map element refers to them.
	for _, o := range all {
		for _, name := range sortedKeys(o.sets) {
			ops = append(ops, op{kind: opAddSet, name: name, set: o.sets[name].def()})
		}
		for _, name := range sortedKeys(o.chains) {
			ops = append(ops, op{kind: opAddChain, name: name, chain: o.chains[name]})
		}
	}
	for _, o := range all {
		for _, name := range sortedKeys(o.chains) {
			for _, r := range o.chains[name].rules {
				ops = append(ops, op{kind: opAddRule, name: name, rule: r})
			}
		}
	}
	for _, k := range flat {
		ops = append(ops, op{kind: opAddRule, name: chainServices, rule: k.rule()})
	}
	for _, o := range all {
		for _, set := range sortedKeys(o.elems) {
			elems := o.elems[set]
			for _, k := range sortedKeys(elems) {
				ops = append(ops, op{kind: opAddElement, name: set, elem: elems[k]})
			}
		}
	}
	for _, key := range sortedKeys(hairpins) {
		ops = append(ops, hairpinOp(opAddElement, hairpins[key], key))
	}
	return ops
}

func hairpinOp(kind opKind, set, key string) op {
	return op{kind: kind, name: set, elem: element{key: strings.Split(key, " . ")}}
}

// change is one service's objects before and after (nil when it did not exist / is gone).
type change struct{ old, new *objects }

// updateServices plans the transaction that turns the services' old objects into their new
// ones, touching nothing else. The steps run over all the changes at once, so an element one
// service gives up is deleted before another service claims it in the same transaction.
func updateServices(changes []change) []op {
	var ops []op
	add := func(o op) { ops = append(ops, o) }
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
				add(op{kind: opAddSet, name: name, set: cur.sets[name].def()})
			}
		}
		for _, name := range sortedKeys(cur.chains) {
			if old.chains[name] == nil {
				add(op{kind: opAddChain, name: name, chain: cur.chains[name]})
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
					add(op{kind: opDeleteElement, name: set, elem: oe})
				}
			}
		}
	}
	// 3. Chains whose rules changed: flushed and rewritten whole.
	for _, c := range changes {
		old, cur := norm(c.old), norm(c.new)
		for _, name := range sortedKeys(cur.chains) {
			ch, o := cur.chains[name], old.chains[name]
			if o != nil && sameRules(o.rules, ch.rules) {
				continue
			}
			if o != nil {
				add(op{kind: opFlushChain, name: name})
			}
			for _, r := range ch.rules {
				add(op{kind: opAddRule, name: name, rule: r})
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
				add(op{kind: opAddElement, name: set, elem: e})
			}
		}
	}
	// 5. Chains and sets that go, now that nothing kept refers to them: chains emptied first,
	// as one removed chain may jump to another or name a removed set.
	for _, c := range changes {
		old, cur := norm(c.old), norm(c.new)
		for _, name := range sortedKeys(old.chains) {
			if cur.chains[name] == nil {
				add(op{kind: opFlushChain, name: name})
			}
		}
	}
	for _, c := range changes {
		old, cur := norm(c.old), norm(c.new)
		for _, name := range sortedKeys(old.chains) {
			if cur.chains[name] == nil {
				add(op{kind: opDeleteChain, name: name})
			}
		}
		for _, name := range sortedKeys(old.sets) {
			if cur.sets[name] == nil {
				add(op{kind: opDeleteSet, name: name})
			}
		}
	}
	return ops
}

// sortedKeys allocates once, at the map's size: a rebuild calls it for every map of every
// service, most of them holding one or two keys.
func sortedKeys[V any](m map[string]V) []string {
	if len(m) == 0 {
		return nil
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
