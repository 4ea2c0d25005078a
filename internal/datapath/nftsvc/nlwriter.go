package nftsvc

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"

	"github.com/twill-net/twill/internal/datapath/nftconn"
)

// netlinkWriter writes straight to the kernel over netlink (google/nftables), one batch per
// transaction. Unlike nft, it reads nothing back first, so a change costs what it sends, not
// what the table holds.
type netlinkWriter struct {
	newConn func() (*nftables.Conn, error)
	table   *nftables.Table
}

// elementsPerMessage is how many elements of def travel in one message: they go in one
// netlink attribute, whose length is 16 bits. Few messages matter: each is acknowledged,
// and reading an acknowledgement costs a wakeup.
func elementsPerMessage(def *setDef) int {
	// Attribute headers of one element, and 20 bytes for each field at most (an IPv6
	// address and its header).
	size := 40 + 20*(len(def.fields)+len(def.data))
	if def.isMap {
		size += 64 // a verdict: its code and a chain name of up to 40 bytes
	}
	return 60000 / size
}

// socketBuffer is the netlink send and receive buffer: a Full of 50,000 services is a batch
// of some 100 MB, and the kernel acknowledges every message in it.
const socketBuffer = 1 << 30

func newNetlinkWriter(netnsFD int) *netlinkWriter {
	return &netlinkWriter{
		newConn: nftconn.Opener(netnsFD, socketBuffer),
		table:   &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet},
	}
}

func userdataComment(c string) []byte { return userdata.AppendString(nil, userdata.TypeComment, c) }

func (w *netlinkWriter) write(ctx context.Context, ops []op) error {
	if len(ops) == 0 {
		return nil
	}
	c, err := w.newConn()
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	b := &nlBatch{w: w, c: c, sets: map[string]*nftables.Set{}, chains: map[string]*nftables.Chain{}}
	for i := 0; i < len(ops); i++ {
		o := ops[i]
		switch o.kind {
		case opAddTable:
			c.AddTable(w.table)
		case opDeleteTable:
			c.DelTable(w.table)
		case opAddSet:
			if err := b.addSet(o.name, o.set); err != nil {
				return err
			}
		case opDeleteSet:
			c.DelSet(&nftables.Set{Table: w.table, Name: o.name})
		case opAddChain:
			b.addChain(o.name, o.chain)
		case opFlushChain:
			c.FlushChain(b.chain(o.name))
		case opDeleteChain:
			c.DelChain(b.chain(o.name))
		case opAddRule:
			b.addRule(o.name, o.rule)
		case opAddElement, opDeleteElement:
			// A run of element ops goes in as few messages as the kernel allows: grouped by
			// set and kind, in the order each group first appears, which keeps a delete
			// before an add of the same key (plans delete first).
			j := i
			for j < len(ops) && (ops[j].kind == opAddElement || ops[j].kind == opDeleteElement) {
				j++
			}
			if err := b.elementRun(ops[i:j]); err != nil {
				return err
			}
			i = j - 1
		default:
			return fmt.Errorf("unknown op %d", o.kind)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables transaction of %d operations: %w", len(ops), err)
	}
	return nil
}

// nlBatch is one transaction being built.
type nlBatch struct {
	w      *netlinkWriter
	c      *nftables.Conn
	sets   map[string]*nftables.Set // made in this batch (rules refer to them by ID too)
	chains map[string]*nftables.Chain
}

func (b *nlBatch) chain(name string) *nftables.Chain {
	if ch := b.chains[name]; ch != nil {
		return ch
	}
	return &nftables.Chain{Table: b.w.table, Name: name}
}

func (b *nlBatch) addChain(name string, c *chain) {
	ch := &nftables.Chain{Table: b.w.table, Name: name}
	if c.base != nil {
		ch.Type = nftables.ChainType(c.base.typ)
		ch.Hooknum = nftables.ChainHookRef(hookNumber(c.base.hook))
		ch.Priority = nftables.ChainPriorityRef(priorityNumber(c.base.priority))
		accept := nftables.ChainPolicyAccept
		ch.Policy = &accept
	}
	b.chains[name] = b.c.AddChain(ch)
}

func (b *nlBatch) addSet(name string, d *setDef) error {
	key, err := concatType(d.fields)
	if err != nil {
		return fmt.Errorf("set %s: %w", name, err)
	}
	s := &nftables.Set{Table: b.w.table, Name: name, KeyType: key}
	if d.isMap {
		s.IsMap, s.DataType = true, nftables.TypeVerdict
	}
	if d.data != nil {
		t, err := concatType(d.data)
		if err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
		s.IsMap, s.DataType = true, t
	}
	if d.timeout > 0 {
		// What nft makes of "flags dynamic; timeout T": the packet path adds to it, and it
		// holds at most 65535 clients.
		s.Dynamic, s.HasTimeout, s.Timeout, s.Size = true, true, d.timeout, 65535
	}
	if err := b.c.AddSet(s, nil); err != nil {
		return fmt.Errorf("set %s: %w", name, err)
	}
	b.sets[name] = s
	return nil
}

func (b *nlBatch) addRule(chain string, r *rule) {
	exprs := make([]expr.Any, len(r.exprs))
	for i, e := range r.exprs {
		exprs[i] = b.withSetID(e)
	}
	nr := &nftables.Rule{Table: b.w.table, Chain: b.chain(chain), Exprs: exprs}
	if r.comment != "" {
		nr.UserData = userdataComment(r.comment)
	}
	b.c.AddRule(nr)
}

// withSetID gives a set lookup the ID of a set made in this same batch (the kernel finds it
// by ID there); one made earlier is found by name.
func (b *nlBatch) withSetID(e expr.Any) expr.Any {
	switch e := e.(type) {
	case *expr.Lookup:
		if s := b.sets[e.SetName]; s != nil {
			l := *e
			l.SetID = s.ID
			return &l
		}
	case *expr.Dynset:
		if s := b.sets[e.SetName]; s != nil {
			d := *e
			d.SetID = s.ID
			return &d
		}
	}
	return e
}

// elementRun sends a run of element ops, grouped by set and kind. Groups hold indexes into
// run, not copies of its ops: a rebuild's run is every element of the table.
func (b *nlBatch) elementRun(run []op) error {
	type group struct {
		kind opKind
		set  string
	}
	var order []group
	groups := map[group][]int32{}
	for i, o := range run {
		g := group{o.kind, o.name}
		if _, seen := groups[g]; !seen {
			order = append(order, g)
		}
		groups[g] = append(groups[g], int32(i))
	}
	for _, g := range order {
		idx := groups[g]
		limit := 1
		if def := defOf(g.set); def != nil {
			limit = elementsPerMessage(def)
		}
		for len(idx) > 0 {
			n := min(limit, len(idx))
			if err := b.elements(run, idx[:n]); err != nil {
				return err
			}
			idx = idx[n:]
		}
	}
	return nil
}

// elements adds or deletes the elements of the ops of run at idx (all of one kind, in one
// set).
func (b *nlBatch) elements(run []op, idx []int32) error {
	first := &run[idx[0]]
	set := first.name
	def := defOf(set)
	if def == nil {
		return fmt.Errorf("elements of %s: not one of the table's shared sets", set)
	}
	s := b.sets[set]
	if s == nil {
		s = &nftables.Set{Table: b.w.table, Name: set, IsMap: def.isMap || def.data != nil}
	}
	elems := make([]nftables.SetElement, len(idx))
	for i, at := range idx {
		o := &run[at]
		key, err := encodeKey(def.fields, o.elem.key)
		if err != nil {
			return fmt.Errorf("element of %s: %w", set, err)
		}
		elems[i].Key = key
		if def.data != nil {
			if elems[i].Val, err = encodeKey(def.data, strings.Split(o.elem.value, " . ")); err != nil {
				return fmt.Errorf("element of %s: %w", set, err)
			}
		}
		if def.isMap {
			target, ok := strings.CutPrefix(o.elem.value, "goto ")
			if !ok {
				return fmt.Errorf("element of %s: verdict %q is not a goto", set, o.elem.value)
			}
			elems[i].VerdictData = &expr.Verdict{Kind: expr.VerdictGoto, Chain: target}
		}
	}
	if first.kind == opDeleteElement {
		return b.c.SetDeleteElements(s, elems)
	}
	return b.c.SetAddElements(s, elems)
}

// concatType is the netlink type of a (concatenated) key or data.
func concatType(fields []string) (nftables.SetDatatype, error) {
	types := make([]nftables.SetDatatype, len(fields))
	for i, f := range fields {
		t, ok := setTypes[f]
		if !ok {
			return nftables.SetDatatype{}, fmt.Errorf("no netlink type for %q", f)
		}
		types[i] = t
	}
	if len(types) == 1 {
		return types[0], nil
	}
	return nftables.ConcatSetType(types...)
}

var setTypes = map[string]nftables.SetDatatype{
	"integer":      nftables.TypeMark, // a numgen result, 4 bytes in host order: nft names no fixed-size integer
	"ipv4_addr":    nftables.TypeIPAddr,
	"ipv6_addr":    nftables.TypeIP6Addr,
	"inet_proto":   nftables.TypeInetProto,
	"inet_service": nftables.TypeInetService,
}

// encodeKey is the kernel's form of a (concatenated) key: each field in network byte order,
// padded to a multiple of 4 bytes.
func encodeKey(fields, values []string) ([]byte, error) {
	if len(fields) != len(values) {
		return nil, fmt.Errorf("key %q has %d fields, want %d", values, len(values), len(fields))
	}
	key := make([]byte, 0, 16*len(fields)) // an IPv6 address is the longest field
	for i, f := range fields {
		var field []byte
		switch f {
		case "ipv4_addr", "ipv6_addr":
			a, err := netip.ParseAddr(values[i])
			if err != nil {
				return nil, err
			}
			field = a.AsSlice()
		case "inet_proto":
			field = []byte{protoNumber(values[i])}
		case "integer":
			n, err := strconv.ParseUint(values[i], 10, 32)
			if err != nil {
				return nil, err
			}
			field = binaryutil.NativeEndian.PutUint32(uint32(n))
		case "inet_service":
			p, err := strconv.ParseUint(values[i], 10, 16)
			if err != nil {
				return nil, err
			}
			field = binaryutil.BigEndian.PutUint16(uint16(p))
		default:
			return nil, fmt.Errorf("no encoding for %q", f)
		}
		key = append(key, field...)
		for len(key)%4 != 0 {
			key = append(key, 0)
		}
	}
	return key, nil
}

func hookNumber(h knftables.BaseChainHook) nftables.ChainHook {
	switch h {
	case knftables.PreroutingHook:
		return unix.NF_INET_PRE_ROUTING
	case knftables.InputHook:
		return unix.NF_INET_LOCAL_IN
	case knftables.ForwardHook:
		return unix.NF_INET_FORWARD
	case knftables.OutputHook:
		return unix.NF_INET_LOCAL_OUT
	}
	return unix.NF_INET_POST_ROUTING
}

// priorityNumber is a base chain priority as a number: nft's names for the ones this table
// uses, or the number itself.
func priorityNumber(p knftables.BaseChainPriority) nftables.ChainPriority {
	switch p {
	case knftables.DNATPriority:
		return -100
	case knftables.SNATPriority:
		return 100
	case knftables.FilterPriority:
		return 0
	}
	n, _ := strconv.Atoi(string(p))
	return nftables.ChainPriority(n)
}
