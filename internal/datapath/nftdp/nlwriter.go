package nftdp

import (
	"context"
	"fmt"
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
// transaction, in this process: a change costs what it sends (a pod is a few set elements),
// where nft costs some 80 ms of CPU for any transaction, and 1.0 reads the whole table first.
type netlinkWriter struct {
	newConn func() (*nftables.Conn, error)
	table   *nftables.Table
}

// socketBuffer is the netlink send and receive buffer: a rebuild of a large cluster's table
// is a batch of tens of megabytes, and the kernel acknowledges every message in it.
const socketBuffer = 1 << 28

func newNetlinkWriter(netnsFD int) *netlinkWriter {
	return &netlinkWriter{
		newConn: nftconn.Opener(netnsFD, socketBuffer),
		table:   &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet},
	}
}

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
		case opAddCounter:
			c.AddObj(&nftables.CounterObj{Table: w.table, Name: o.name})
		case opDeleteCounter:
			c.DeleteObject(&nftables.CounterObj{Table: w.table, Name: o.name})
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
			if err := b.addRule(o.name, o.rule); err != nil {
				return err
			}
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

// counters reads every named counter of the table in one dump.
func (w *netlinkWriter) counters(ctx context.Context) (map[string]counterValue, error) {
	c, err := w.newConn()
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	objs, err := c.GetNamedObjects(w.table)
	if err != nil {
		return nil, err
	}
	out := make(map[string]counterValue, len(objs))
	for _, o := range objs {
		n, ok := o.(*nftables.NamedObj)
		if !ok || n.Type != nftables.ObjTypeCounter {
			continue
		}
		if v, ok := n.Obj.(*expr.Counter); ok {
			out[n.Name] = counterValue{packets: v.Packets, bytes: v.Bytes}
		}
	}
	return out, nil
}

// nlBatch is one transaction being built.
type nlBatch struct {
	w      *netlinkWriter
	c      *nftables.Conn
	sets   map[string]*nftables.Set // made in this batch (rules refer to them by ID too)
	chains map[string]*nftables.Chain
	// zeroEnded holds the interval sets made in this batch that were given nft's leading
	// interval end (see rbtreeElements).
	zeroEnded map[string]bool
}

func (b *nlBatch) chain(name string) *nftables.Chain {
	if ch := b.chains[name]; ch != nil {
		return ch
	}
	return &nftables.Chain{Table: b.w.table, Name: name}
}

func (b *nlBatch) addChain(name string, c *chainModel) {
	ch := &nftables.Chain{Table: b.w.table, Name: name}
	if c.hook != nil {
		ch.Type = nftables.ChainTypeFilter
		ch.Hooknum = nftables.ChainHookRef(hookNumber(*c.hook))
		ch.Priority = nftables.ChainPriorityFilter
		accept := nftables.ChainPolicyAccept
		ch.Policy = &accept
	}
	b.chains[name] = b.c.AddChain(ch)
}

func hookNumber(h knftables.BaseChainHook) nftables.ChainHook {
	switch h {
	case knftables.InputHook:
		return unix.NF_INET_LOCAL_IN
	case knftables.OutputHook:
		return unix.NF_INET_LOCAL_OUT
	}
	return unix.NF_INET_FORWARD
}

func (b *nlBatch) addSet(name string, m *setModel) error {
	fields := strings.Split(m.typ, " . ")
	key, err := concatType(fields)
	if err != nil {
		return fmt.Errorf("set %s: %w", name, err)
	}
	s := &nftables.Set{Table: b.w.table, Name: name, KeyType: key, Interval: m.interval,
		Concatenation: m.interval && len(fields) > 1, Comment: safeComment(m.comment)}
	if len(fields) == 1 && fields[0] == "mark" {
		s.KeyByteOrder = binaryutil.NativeEndian
	} else if len(fields) == 1 {
		s.KeyByteOrder = binaryutil.BigEndian
	}
	switch m.valueTyp {
	case "verdict":
		s.IsMap, s.DataType = true, nftables.TypeVerdict
	case "mark":
		s.IsMap, s.DataType = true, nftables.TypeMark
	}
	if err := b.c.AddSet(s, nil); err != nil {
		return fmt.Errorf("set %s: %w", name, err)
	}
	if m.valueTyp == "mark" {
		markHostByteOrderData(b.c)
	}
	b.sets[name] = s
	return nil
}

func (b *nlBatch) addRule(chain string, r *rule) error {
	exprs := make([]expr.Any, len(r.exprs))
	var anon []*nftables.Set
	for _, a := range r.anon {
		s, err := b.addAnonSet(a)
		if err != nil {
			return fmt.Errorf("rule %q: %w", r.String(), err)
		}
		anon = append(anon, s)
	}
	for i, e := range r.exprs {
		exprs[i] = b.withSetID(e, anon)
	}
	nr := &nftables.Rule{Table: b.w.table, Chain: b.chain(chain), Exprs: exprs}
	if r.comment != "" {
		nr.UserData = userdata.AppendString(nil, userdata.TypeComment, safeComment(r.comment))
	}
	b.c.AddRule(nr)
	return nil
}

// addAnonSet makes an anonymous set of a rule, with its elements, as nft does: constant, an
// interval set when its elements are ranges.
func (b *nlBatch) addAnonSet(a *anonSet) (*nftables.Set, error) {
	key, err := concatType(a.fields)
	if err != nil {
		return nil, err
	}
	s := &nftables.Set{Table: b.w.table, Anonymous: true, Constant: true, KeyType: key,
		Interval: a.interval, Concatenation: a.interval && len(a.fields) > 1}
	elems := make([]nftables.SetElement, len(a.elems))
	for i, e := range a.elems {
		elems[i] = nftables.SetElement{Key: e.key, KeyEnd: e.keyEnd}
	}
	if err := b.c.AddSet(s, elems); err != nil {
		return nil, err
	}
	return s, nil
}

// withSetID gives a set lookup the ID of a set made in this same batch (the kernel finds it
// by ID there), and the name and ID of its anonymous set; one made earlier is found by name.
func (b *nlBatch) withSetID(e expr.Any, anon []*nftables.Set) expr.Any {
	l, ok := e.(*expr.Lookup)
	if !ok {
		return e
	}
	if i, isAnon := strings.CutPrefix(l.SetName, anonPrefix); isAnon {
		n, _ := strconv.Atoi(i)
		c := *l
		c.SetName, c.SetID = anon[n].Name, anon[n].ID
		return &c
	}
	if s := b.sets[l.SetName]; s != nil {
		c := *l
		c.SetID = s.ID
		return &c
	}
	return e
}

// concatType is the netlink type of a (concatenated) key.
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
	"ipv4_addr":    nftables.TypeIPAddr,
	"ipv6_addr":    nftables.TypeIP6Addr,
	"mark":         nftables.TypeMark,
	"inet_proto":   nftables.TypeInetProto,
	"inet_service": nftables.TypeInetService,
	"icmpv6_type":  nftables.TypeICMP6Type,
}
