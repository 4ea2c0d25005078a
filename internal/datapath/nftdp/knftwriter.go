package nftdp

import (
	"context"
	"fmt"

	"sigs.k8s.io/knftables"
)

// writer sends one planned transaction to the kernel (or a fake), all or nothing, and reads
// the table's counters.
type writer interface {
	write(ctx context.Context, ops []op) error
	counters(ctx context.Context) (map[string]counterValue, error)
}

type counterValue struct{ packets, bytes uint64 }

// knftWriter writes through knftables: nft syntax, run by the nft binary (or kept by
// knftables' fake, whose dump the golden tests compare). It is not what the agent uses: nft
// costs some 80 ms of CPU a transaction even on a tiny table, and 1.0 reads every chain of the
// table first. It is the reference the netlink writer is checked against.
type knftWriter struct{ nft knftables.Interface }

func (w knftWriter) write(ctx context.Context, ops []op) error {
	tx := w.nft.NewTransaction()
	for _, o := range ops {
		switch o.kind {
		case opAddTable:
			tx.Add(&knftables.Table{})
		case opDeleteTable:
			tx.Delete(&knftables.Table{})
		case opAddCounter:
			tx.Add(&knftables.Counter{Name: o.name})
		case opDeleteCounter:
			tx.Delete(&knftables.Counter{Name: o.name})
		case opAddSet:
			tx.Add(o.set.knftObject(o.name))
		case opDeleteSet:
			tx.Delete(o.set.knftObject(o.name))
		case opAddChain:
			tx.Add(o.chain.knftObject(o.name))
		case opFlushChain:
			tx.Flush(&knftables.Chain{Name: o.name})
		case opDeleteChain:
			tx.Delete(&knftables.Chain{Name: o.name})
		case opAddRule:
			r := &knftables.Rule{Chain: o.name, Rule: o.rule.String()}
			if o.rule.comment != "" {
				r.Comment = knftables.PtrTo(safeComment(o.rule.comment))
			}
			tx.Add(r)
		case opAddElement:
			tx.Add(o.set.knftElement(o.name, o.elem))
		case opDeleteElement:
			tx.Delete(o.set.knftElement(o.name, o.elem))
		default:
			return fmt.Errorf("unknown op %d", o.kind)
		}
	}
	if tx.NumOperations() == 0 {
		return nil
	}
	return w.nft.Run(ctx, tx)
}

func (w knftWriter) counters(ctx context.Context) (map[string]counterValue, error) {
	list, err := w.nft.ListCounters(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]counterValue, len(list))
	for _, c := range list {
		if c == nil { // knftables' fake lists some
			continue
		}
		var v counterValue
		if c.Packets != nil {
			v.packets = *c.Packets
		}
		if c.Bytes != nil {
			v.bytes = *c.Bytes
		}
		out[c.Name] = v
	}
	return out, nil
}

func (s *setModel) knftObject(name string) knftables.Object {
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

func (s *setModel) knftElement(name string, e element) *knftables.Element {
	if s.valueTyp != "" {
		return &knftables.Element{Map: name, Key: e.key, Value: []string{e.value}}
	}
	return &knftables.Element{Set: name, Key: e.key}
}

func (c *chainModel) knftObject(name string) *knftables.Chain {
	ch := &knftables.Chain{Name: name}
	if c.hook != nil {
		ch.Type = knftables.PtrTo(knftables.FilterType)
		ch.Hook = c.hook
		ch.Priority = knftables.PtrTo(knftables.FilterPriority)
		ch.Policy = knftables.PtrTo(knftables.AcceptPolicy)
	}
	return ch
}
