package nftdp

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// rule is one rule in both of the forms the table is written in: nft syntax (knftables, the
// golden tests, and what an operator reads in `nft list`) and the kernel's expressions
// (netlink). Every rule is made by the builder methods below, each of which appends one
// construct to both forms as nft 1.0 compiles it, so the two cannot drift apart;
// TestNetlinkMatchesNft checks that the kernel holds the same table whichever way it was
// written.
type rule struct {
	words   []string
	exprs   []expr.Any
	anon    []*anonSet // anonymous sets the rule looks up, in order (see anonLookup)
	comment string
	// family is the family whose match the rule already has: nft matches it once per rule.
	family *family
	text   string // words joined, once the rule is complete
}

func newRule() *rule { return &rule{} }

func (r *rule) String() string {
	if r.text == "" {
		r.text = strings.Join(r.words, " ")
	}
	return r.text
}

func (r *rule) add(text string, e ...expr.Any) *rule {
	r.words = append(r.words, text)
	r.exprs = append(r.exprs, e...)
	r.text = ""
	return r
}

// sameRules compares two chains' rules by their text, which says everything of a rule.
func sameRules(a, b []*rule) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].String() != b[i].String() || a[i].comment != b[i].comment {
			return false
		}
	}
	return true
}

// Registers: four 16-byte registers (1-4) overlap sixteen 4-byte ones (8-23); register 1 is
// 8-11. A concatenated key is loaded into consecutive 4-byte registers from register 1, each
// field padded to 4 bytes.
const (
	reg1   = 1
	reg32  = 8 // first 4-byte register, the same bytes as reg1
	regVer = 0 // the verdict register, where a verdict-map lookup writes
)

func cmpEq(reg uint32, data []byte) *expr.Cmp {
	return &expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: data}
}

func u32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

// familyMatch is the implicit "meta nfproto" check of an ip/ip6 match in an inet table, made
// once per rule as nft does.
func (r *rule) familyMatch(f family) []expr.Any {
	if r.family != nil && *r.family == f {
		return nil
	}
	r.family = &f
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1}, cmpEq(reg1, []byte{f.nfprotoNum})}
}

// loadAddr loads the source or destination address into reg.
func loadAddr(f family, field string, reg uint32) *expr.Payload {
	offset := f.saddrOffset
	if field == "daddr" {
		offset += f.addrLen
	}
	return &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg, Base: expr.PayloadBaseNetworkHeader,
		Offset: offset, Len: f.addrLen}
}

// nfproto: "meta nfproto ipv4".
func (r *rule) nfproto(f family) *rule {
	return r.add("meta nfproto "+f.nfproto,
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1}, cmpEq(reg1, []byte{f.nfprotoNum}))
}

// addrIn: "ip saddr @SET", or with invert "ip saddr != @SET".
func (r *rule) addrIn(f family, field, set string, invert bool) *rule {
	op := " "
	if invert {
		op = " != "
	}
	e := append(r.familyMatch(f), loadAddr(f, field, reg1), &expr.Lookup{SourceRegister: reg1, SetName: set, Invert: invert})
	return r.add(f.addr+" "+field+op+"@"+set, e...)
}

// ctMarkIn: "ct mark @SET", the peer's identity in an identity set.
func (r *rule) ctMarkIn(set string) *rule {
	return r.add("ct mark @"+set, &expr.Ct{Key: expr.CtKeyMARK, Register: reg1}, &expr.Lookup{SourceRegister: reg1, SetName: set})
}

// ctState: "ct state NAMES", matching any of the state bits.
func (r *rule) ctState(names string, bits uint32) *rule {
	return r.add("ct state "+names, &expr.Ct{Key: expr.CtKeySTATE, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: u32(bits), Xor: u32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: u32(0)})
}

// ctMarkSetZero: "ct mark set 0".
func (r *rule) ctMarkSetZero() *rule {
	return r.add("ct mark set 0", &expr.Immediate{Register: reg1, Data: u32(0)},
		&expr.Ct{Key: expr.CtKeyMARK, Register: reg1, SourceRegister: true})
}

// ctMarkSetMap: "ct mark set ip saddr map @MAP", the identity of the address, when the map
// has it (else the rule stops and the mark stays as it was).
func (r *rule) ctMarkSetMap(f family, field, set string) *rule {
	e := append(r.familyMatch(f), loadAddr(f, field, reg1),
		&expr.Lookup{SourceRegister: reg1, SetName: set, DestRegister: reg1, IsDestRegSet: true},
		&expr.Ct{Key: expr.CtKeyMARK, Register: reg1, SourceRegister: true})
	return r.add("ct mark set "+f.addr+" "+field+" map @"+set, e...)
}

// l4proto: "meta l4proto tcp".
func (r *rule) l4proto(p string) *rule {
	return r.add("meta l4proto "+p, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1}, cmpEq(reg1, []byte{protoNumber(p)}))
}

// keyField is one field of a concatenated lookup key.
type keyField int

const (
	fieldSaddr keyField = iota
	fieldDaddr
	fieldCtMark
	fieldL4proto
	fieldDport
)

// concat: "ip saddr . ct mark . meta l4proto . th dport @SET" (or "vmap @SET"). A lookup in
// an interval set converts the mark and protocol to network byte order as nft does (the
// protocol's conversion, of one byte, changes nothing).
func (r *rule) concat(f family, fields []keyField, set string, vmap, interval bool) *rule {
	var words []string
	var e []expr.Any
	reg := uint32(reg32)
	for _, k := range fields {
		// A field starting on a 16-byte boundary is named by its 16-byte register, as nft
		// names it (the same bytes either way).
		dest := reg
		if (reg-reg32)%4 == 0 {
			dest = reg1 + (reg-reg32)/4
		}
		switch k {
		case fieldSaddr, fieldDaddr:
			field := map[keyField]string{fieldSaddr: "saddr", fieldDaddr: "daddr"}[k]
			words = append(words, f.addr+" "+field)
			e = append(e, r.familyMatch(f)...)
			e = append(e, loadAddr(f, field, dest))
			reg += f.addrLen / 4
		case fieldCtMark:
			words = append(words, "ct mark")
			e = append(e, &expr.Ct{Key: expr.CtKeyMARK, Register: dest})
			if interval {
				e = append(e, &expr.Byteorder{SourceRegister: dest, DestRegister: dest, Op: expr.ByteorderHton, Len: 4, Size: 4})
			}
			reg++
		case fieldL4proto:
			words = append(words, "meta l4proto")
			e = append(e, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: dest})
			if interval {
				e = append(e, &expr.Byteorder{SourceRegister: dest, DestRegister: dest, Op: expr.ByteorderHton, Len: 1, Size: 2})
			}
			reg++
		case fieldDport:
			words = append(words, "th dport")
			e = append(e, &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: dest,
				Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
			reg++
		}
	}
	l := &expr.Lookup{SourceRegister: reg1, SetName: set}
	text := strings.Join(words, " . ") + " @" + set
	if vmap {
		l.DestRegister, l.IsDestRegSet = regVer, true
		text = strings.Join(words, " . ") + " vmap @" + set
	}
	return r.add(text, append(e, l)...)
}

// anonSet is an anonymous set of constants a rule looks up, made with the rule.
type anonSet struct {
	fields   []string // key type, one nft type name per concatenated field
	interval bool
	elems    []anonElem
}

type anonElem struct{ key, keyEnd []byte }

// anonPrefix names an anonymous set in a rule's lookup until the writer makes it: the
// kernel names it (__set%d) when the batch is applied.
const anonPrefix = "\x00anon"

func (r *rule) anonLookup(s *anonSet) *expr.Lookup {
	r.anon = append(r.anon, s)
	return &expr.Lookup{SourceRegister: reg1, SetName: anonPrefix + strconv.Itoa(len(r.anon)-1)}
}

// icmpv6ND: "icmpv6 type { nd-router-solicit, ... nd-redirect }", IPv6 neighbour discovery.
func (r *rule) icmpv6ND() *rule {
	s := &anonSet{fields: []string{"icmpv6_type"}}
	for t := byte(133); t <= 137; t++ { // router solicitation to redirect
		s.elems = append(s.elems, anonElem{key: []byte{t}})
	}
	e := append(r.familyMatch(ipv6), &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1}, cmpEq(reg1, []byte{unix.IPPROTO_ICMPV6}),
		&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		r.anonLookup(s))
	return r.add("icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect }", e...)
}

// protoPort is one element of a rule's anonymous set of (protocol . port range).
type protoPort struct {
	proto       string
	first, last uint16
}

// protoPorts: "meta l4proto . th dport { tcp . 22, udp . 53-54 }". The set is an interval
// set when an element is a range, as nft makes it.
func (r *rule) protoPorts(elems []protoPort) *rule {
	s := &anonSet{fields: []string{"inet_proto", "inet_service"}}
	texts := make([]string, len(elems))
	for i, pp := range elems {
		texts[i] = pp.proto + " . " + strconv.Itoa(int(pp.first))
		if pp.first != pp.last {
			texts[i] += "-" + strconv.Itoa(int(pp.last))
			s.interval = true
		}
	}
	for _, pp := range elems {
		key := func(port uint16) []byte {
			return append([]byte{protoNumber(pp.proto), 0, 0, 0}, binaryutil.BigEndian.PutUint16(port)[0], binaryutil.BigEndian.PutUint16(port)[1], 0, 0)
		}
		el := anonElem{key: key(pp.first)}
		if s.interval {
			el.keyEnd = key(pp.last)
		}
		s.elems = append(s.elems, el)
	}
	e := []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1}}
	if s.interval {
		e = append(e, &expr.Byteorder{SourceRegister: reg1, DestRegister: reg1, Op: expr.ByteorderHton, Len: 1, Size: 2})
	}
	e = append(e, &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg32 + 1,
		Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}, r.anonLookup(s))
	return r.add("meta l4proto . th dport { "+strings.Join(texts, ", ")+" }", e...)
}

// dportRange: "th dport FIRST-LAST".
func (r *rule) dportRange(first, last uint16) *rule {
	return r.add(fmt.Sprintf("th dport %d-%d", first, last),
		&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpGte, Register: reg1, Data: binaryutil.BigEndian.PutUint16(first)},
		&expr.Cmp{Op: expr.CmpOpLte, Register: reg1, Data: binaryutil.BigEndian.PutUint16(last)})
}

// counter: "counter name NAME", counting into a named counter.
func (r *rule) counter(name string) *rule {
	return r.add("counter name "+name, &expr.Objref{Type: unix.NFT_OBJECT_COUNTER, Name: name})
}

// dropLog: "limit rate R/second burst B packets counter name C log group G snaplen S prefix
// "P"", the logging half of a drop chain.
func (r *rule) dropLog(counter string) *rule {
	r.add(fmt.Sprintf("limit rate %d/second burst %d packets", DropLogRate, DropLogBurst),
		&expr.Limit{Type: expr.LimitTypePkts, Rate: DropLogRate, Unit: expr.LimitTimeSecond, Burst: DropLogBurst})
	r.counter(counter)
	prefix := DropLogPrefix(counter)
	return r.add(fmt.Sprintf("log group %d snaplen %d prefix %q", DropLogGroup, dropLogSnaplen, prefix),
		&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_SNAPLEN | 1<<unix.NFTA_LOG_PREFIX,
			Group: DropLogGroup, Snaplen: dropLogSnaplen, Data: []byte(prefix)})
}

func (r *rule) accept() *rule { return r.add("accept", &expr.Verdict{Kind: expr.VerdictAccept}) }
func (r *rule) drop() *rule   { return r.add("drop", &expr.Verdict{Kind: expr.VerdictDrop}) }
func (r *rule) ret() *rule    { return r.add("return", &expr.Verdict{Kind: expr.VerdictReturn}) }

func (r *rule) jump(chain string) *rule {
	return r.add("jump "+chain, &expr.Verdict{Kind: expr.VerdictJump, Chain: chain})
}

func (r *rule) goTo(chain string) *rule {
	return r.add("goto "+chain, &expr.Verdict{Kind: expr.VerdictGoto, Chain: chain})
}

func protoNumber(p string) byte {
	switch p {
	case "tcp":
		return unix.IPPROTO_TCP
	case "udp":
		return unix.IPPROTO_UDP
	case "sctp":
		return unix.IPPROTO_SCTP
	}
	n, _ := strconv.Atoi(p)
	return byte(n)
}
