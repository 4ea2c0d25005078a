package nftsvc

import (
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
	// flat are the flat-path membership sets (and rules) the service needs; hairpin its
	// endpoints' hairpin elements (key -> set), which services may share.
	flat    map[flatKey]bool
	hairpin map[string]string
}

type chain struct {
	base *baseChain // nil for a regular chain
	// comment says what the chain is for; it is written on the chain's first rule (chains
	// carry no comment over netlink here).
	comment string
	rules   []*rule
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
	value string // map value ("goto CHAIN", or data fields joined by " . "); empty for a set element
}

func newObjects() *objects {
	return &objects{chains: map[string]*chain{}, sets: map[string]*affinity{}, elems: map[string]map[string]element{},
		flat: map[flatKey]bool{}, hairpin: map[string]string{}}
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

// add appends r, carrying the chain's comment if it is the first.
func (c *chain) add(r *rule) {
	if len(c.rules) == 0 {
		r.comment = c.comment
	}
	c.rules = append(c.rules, r)
}

// sameRules says whether two rule lists read the same (and so compile the same).
func sameRules(a, b []*rule) bool {
	return slices.EqualFunc(a, b, func(x, y *rule) bool { return x.String() == y.String() && x.comment == y.comment })
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
