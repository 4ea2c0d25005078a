package nftsvc

import (
	"context"
	"fmt"
	"strings"

	"sigs.k8s.io/knftables"
)

// writer sends one planned transaction to the kernel (or a fake), all or nothing.
type writer interface {
	write(ctx context.Context, ops []op) error
}

// knftWriter writes through knftables: nft syntax, run by the nft binary (or kept by
// knftables' fake, whose dump the golden tests compare). It is not what the agent uses, as nft
// 1.0 reads every chain of the table before any transaction; it is the reference the netlink
// writer is checked against.
type knftWriter struct{ nft knftables.Interface }

func (w knftWriter) write(ctx context.Context, ops []op) error {
	tx := w.nft.NewTransaction()
	for _, o := range ops {
		switch o.kind {
		case opAddTable:
			tx.Add(&knftables.Table{})
		case opDeleteTable:
			tx.Delete(&knftables.Table{})
		case opAddSet:
			tx.Add(o.set.knftObject(o.name))
		case opDeleteSet:
			tx.Delete(&knftables.Set{Name: o.name})
		case opAddChain:
			tx.Add(o.chain.knftObject(o.name))
		case opFlushChain:
			tx.Flush(&knftables.Chain{Name: o.name})
		case opDeleteChain:
			tx.Delete(&knftables.Chain{Name: o.name})
		case opAddRule:
			r := &knftables.Rule{Chain: o.name, Rule: o.rule.String()}
			if o.rule.comment != "" {
				r.Comment = knftables.PtrTo(o.rule.comment)
			}
			tx.Add(r)
		case opAddElement:
			tx.Add(knftElement(o.name, o.elem))
		case opDeleteElement:
			tx.Delete(knftElement(o.name, o.elem))
		default:
			return fmt.Errorf("unknown op %d", o.kind)
		}
	}
	if tx.NumOperations() == 0 {
		return nil
	}
	return w.nft.Run(ctx, tx)
}

func (d *setDef) knftObject(name string) knftables.Object {
	typ := strings.Join(d.fields, " . ")
	switch {
	case d.typeof != "":
		return &knftables.Map{Name: name, TypeOf: d.typeof}
	case d.data != nil:
		return &knftables.Map{Name: name, Type: typ + " : " + strings.Join(d.data, " . ")}
	case d.isMap:
		return &knftables.Map{Name: name, Type: typ + " : verdict"}
	case d.timeout > 0:
		return &knftables.Set{Name: name, Type: typ, Flags: []knftables.SetFlag{knftables.DynamicFlag},
			Timeout: knftables.PtrTo(d.timeout)}
	}
	return &knftables.Set{Name: name, Type: typ}
}

func knftElement(set string, e element) *knftables.Element {
	if d := defOf(set); d != nil && (d.isMap || d.data != nil) {
		return &knftables.Element{Map: set, Key: e.key, Value: []string{e.value}}
	}
	return &knftables.Element{Set: set, Key: e.key}
}

func (c *chain) knftObject(name string) *knftables.Chain {
	ch := &knftables.Chain{Name: name}
	if c.base != nil {
		ch.Type = knftables.PtrTo(c.base.typ)
		ch.Hook = knftables.PtrTo(c.base.hook)
		ch.Priority = knftables.PtrTo(c.base.priority)
		ch.Policy = knftables.PtrTo(knftables.AcceptPolicy)
	}
	return ch
}
