package nftdp

import (
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
)

// Set elements over netlink, encoded as nft encodes them:
//
//   - a plain set or map: the key, each field in its byte order, padded to 4 bytes;
//   - an interval set of one field (rbtree): a range is two elements, its start, and the
//     value after its end flagged as an interval end (none when the range runs to the
//     largest value); a set made in the batch that holds no range starting at zero begins
//     with an interval end at zero;
//   - an interval set of a concatenation (pipapo): one element with the first and the last
//     key, marks in network byte order (the rule converts the packet's mark to match).

// elementsPerMessage is how many elements of s travel in one message: they go in one netlink
// attribute, whose length is 16 bits. Few messages matter: each is acknowledged.
func elementsPerMessage(s *setModel) int {
	fields := strings.Count(s.typ, " . ") + 1
	// Attribute headers of one element, and 20 bytes for each field at most (an IPv6
	// address and its header), twice for an interval's end.
	size := 48 + 40*fields
	if s.valueTyp == "verdict" {
		size += 64 // a verdict: its code and a chain name of up to 40 bytes
	} else if s.valueTyp != "" {
		size += 16
	}
	return 60000 / size
}

// elementRun sends a run of element ops, grouped by set and kind.
func (b *nlBatch) elementRun(run []op) error {
	type group struct {
		kind opKind
		set  string
	}
	var order []group
	groups := map[group][]op{}
	for _, o := range run {
		g := group{o.kind, o.name}
		if _, seen := groups[g]; !seen {
			order = append(order, g)
		}
		groups[g] = append(groups[g], o)
	}
	for _, g := range order {
		ops := groups[g]
		elems, err := b.encode(ops)
		if err != nil {
			return err
		}
		s := b.sets[g.set]
		if s == nil {
			m := ops[0].set
			s = &nftables.Set{Table: b.w.table, Name: g.set, IsMap: m.valueTyp != "", Interval: m.interval}
		}
		limit := elementsPerMessage(ops[0].set)
		for len(elems) > 0 {
			n := min(limit, len(elems))
			// An interval's start and end travel together.
			if n < len(elems) && elems[n].IntervalEnd {
				n++
			}
			if g.kind == opDeleteElement {
				err = b.c.SetDeleteElements(s, elems[:n])
			} else {
				err = b.c.SetAddElements(s, elems[:n])
			}
			if err != nil {
				return fmt.Errorf("elements of %s: %w", g.set, err)
			}
			elems = elems[n:]
		}
	}
	return nil
}

// encode turns ops' elements (all of one set and kind) into netlink elements.
func (b *nlBatch) encode(ops []op) ([]nftables.SetElement, error) {
	set, m := ops[0].name, ops[0].set
	fields := strings.Split(m.typ, " . ")
	rbtree := m.interval && len(fields) == 1
	out := make([]nftables.SetElement, 0, len(ops))
	if rbtree && ops[0].kind == opAddElement && b.sets[set] != nil && !b.zeroEnded[set] {
		zero := true
		for _, o := range ops {
			if lo, _, err := fieldRange(fields[0], o.elem.key[0], false); err == nil && isZero(lo) {
				zero = false
			}
		}
		if zero {
			out = append(out, nftables.SetElement{Key: make([]byte, keyLen(fields[0])), IntervalEnd: true})
		}
		if b.zeroEnded == nil {
			b.zeroEnded = map[string]bool{}
		}
		b.zeroEnded[set] = true
	}
	for _, o := range ops {
		if len(o.elem.key) != len(fields) {
			return nil, fmt.Errorf("element %q of %s: want %d fields", o.elem.key, set, len(fields))
		}
		var e nftables.SetElement
		var err error
		if rbtree {
			lo, hi, err := fieldRange(fields[0], o.elem.key[0], false)
			if err != nil {
				return nil, fmt.Errorf("element of %s: %w", set, err)
			}
			e.Key = lo
			if err := b.value(&e, m, o.elem.value); err != nil {
				return nil, fmt.Errorf("element of %s: %w", set, err)
			}
			out = append(out, e)
			if end, ok := increment(hi); ok {
				out = append(out, nftables.SetElement{Key: end, IntervalEnd: true})
			}
			continue
		}
		for i, f := range fields {
			lo, hi, err := fieldRange(f, o.elem.key[i], m.interval)
			if err != nil {
				return nil, fmt.Errorf("element of %s: %w", set, err)
			}
			e.Key = append(e.Key, pad4(lo)...)
			if m.interval {
				e.KeyEnd = append(e.KeyEnd, pad4(hi)...)
			}
		}
		if err = b.value(&e, m, o.elem.value); err != nil {
			return nil, fmt.Errorf("element of %s: %w", set, err)
		}
		out = append(out, e)
	}
	return out, nil
}

func (b *nlBatch) value(e *nftables.SetElement, m *setModel, value string) error {
	switch m.valueTyp {
	case "verdict":
		target, ok := strings.CutPrefix(value, "goto ")
		if !ok {
			return fmt.Errorf("verdict %q is not a goto", value)
		}
		e.VerdictData = &expr.Verdict{Kind: expr.VerdictGoto, Chain: target}
	case "mark":
		n, err := strconv.ParseUint(value, 10, 32)
		if err != nil {
			return err
		}
		e.Val = binaryutil.NativeEndian.PutUint32(uint32(n))
	}
	return nil
}

// fieldRange reads one field of an element's key, a value or a range of values (a-b, or an
// address prefix), and returns its first and last value as the kernel holds them. A mark in
// an interval concatenation is in network byte order, elsewhere in the host's.
func fieldRange(typ, text string, intervalConcat bool) (lo, hi []byte, err error) {
	switch typ {
	case "ipv4_addr", "ipv6_addr":
		if p, err := netip.ParsePrefix(text); err == nil {
			span := prefixSpan(p, 0)
			f := ipv6
			if p.Addr().Is4() {
				f = ipv4
			}
			return u128Addr(span.lo, f).AsSlice(), u128Addr(span.hi, f).AsSlice(), nil
		}
		first, last, isRange := strings.Cut(text, "-")
		a, err := netip.ParseAddr(first)
		if err != nil {
			return nil, nil, err
		}
		z := a
		if isRange {
			if z, err = netip.ParseAddr(last); err != nil {
				return nil, nil, err
			}
		}
		return a.AsSlice(), z.AsSlice(), nil
	case "mark", "inet_service":
		first, last, isRange := strings.Cut(text, "-")
		bits := 32
		if typ == "inet_service" {
			bits = 16
		}
		a, err := strconv.ParseUint(first, 10, bits)
		if err != nil {
			return nil, nil, err
		}
		z := a
		if isRange {
			if z, err = strconv.ParseUint(last, 10, bits); err != nil {
				return nil, nil, err
			}
		}
		if typ == "inet_service" {
			return binaryutil.BigEndian.PutUint16(uint16(a)), binaryutil.BigEndian.PutUint16(uint16(z)), nil
		}
		if intervalConcat {
			return binaryutil.BigEndian.PutUint32(uint32(a)), binaryutil.BigEndian.PutUint32(uint32(z)), nil
		}
		return binaryutil.NativeEndian.PutUint32(uint32(a)), binaryutil.NativeEndian.PutUint32(uint32(z)), nil
	case "inet_proto":
		p := []byte{protoNumber(text)}
		return p, p, nil
	}
	return nil, nil, fmt.Errorf("no encoding for %q", typ)
}

func keyLen(typ string) int {
	switch typ {
	case "ipv6_addr":
		return 16
	case "inet_proto":
		return 1
	case "inet_service":
		return 2
	}
	return 4
}

func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func isZero(b []byte) bool { return len(bytes.Trim(b, "\x00")) == 0 }

// increment returns the big-endian number after b; ok is false when b is the largest.
func increment(b []byte) (next []byte, ok bool) {
	next = bytes.Clone(b)
	for i := len(next) - 1; i >= 0; i-- {
		next[i]++
		if next[i] != 0 {
			return next, true
		}
	}
	return nil, false
}
