package nftsvc

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// rule is one rule in both of the forms the table is written in: nft syntax (knftables, the
// golden tests, and what an operator reads in `nft list`) and the kernel's expressions
// (netlink). Every rule is made by the builder methods below, each of which appends one
// construct to both forms, so the two cannot drift apart; TestNetlinkMatchesNft checks that
// the kernel lists the same table whichever way it was written.
type rule struct {
	words   []string
	exprs   []expr.Any
	comment string
}

func newRule() *rule { return &rule{} }

func (r *rule) String() string { return strings.Join(r.words, " ") }

func (r *rule) add(text string, e ...expr.Any) *rule {
	r.words = append(r.words, text)
	r.exprs = append(r.exprs, e...)
	return r
}

// Registers: the kernel has four 16-byte registers (1-4) that overlap sixteen 4-byte ones
// (8-23); register 1 is 8-11. A concatenated key is loaded into consecutive 4-byte
// registers starting at register 1, each field padded to 4 bytes.
const (
	reg1   = 1
	reg2   = 2
	reg32  = 8 // first 4-byte register, the same bytes as reg1
	regVer = 0 // the verdict register, where a verdict-map lookup writes
)

func cmpEq(reg uint32, data []byte) *expr.Cmp {
	return &expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: data}
}

func cmpNeq(reg uint32, data []byte) *expr.Cmp {
	return &expr.Cmp{Op: expr.CmpOpNeq, Register: reg, Data: data}
}

func u32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

// matchFamily is the implicit check every ip/ip6 match has in an inet table.
func matchFamily(f family) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1}, cmpEq(reg1, []byte{f.nfproto})}
}

// loadAddr loads the packet's source or destination address into register 1.
func loadAddr(f family, which string) []expr.Any {
	offset := map[string]uint32{"saddr": f.saddrOffset, "daddr": f.saddrOffset + f.addrLen}[which]
	return append(matchFamily(f), &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg1,
		Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: f.addrLen})
}

func loadL4proto(reg uint32) *expr.Meta { return &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg} }

func loadDport(reg uint32) *expr.Payload {
	return &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg,
		Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
}

// frontendKey: "ip daddr . meta l4proto . th dport", the key of the frontends maps.
func (r *rule) frontendKey(f family) *rule {
	next := reg32 + f.addrLen/4
	e := append(loadAddr(f, "daddr"), loadL4proto(next), loadDport(next+1))
	return r.add(f.addr+" daddr . meta l4proto . th dport", e...)
}

// protoPortKey: "meta l4proto . th dport", the key of the NodePort maps.
func (r *rule) protoPortKey() *rule {
	return r.add("meta l4proto . th dport", loadL4proto(reg1), loadDport(reg32+1))
}

// inSet matches when the key loaded before is in set.
func (r *rule) inSet(set string) *rule {
	return r.add("@"+set, &expr.Lookup{SourceRegister: reg1, SetName: set})
}

// vmap jumps as the verdict map set says for the key loaded before.
func (r *rule) vmap(set string) *rule {
	return r.add("vmap @"+set, &expr.Lookup{SourceRegister: reg1, SetName: set, DestRegister: regVer, IsDestRegSet: true})
}

func (r *rule) ctStateNew() *rule {
	return r.add("ct state new",
		&expr.Ct{Register: reg1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: u32(8), Xor: u32(0)}, // ct state new is bit 3
		cmpNeq(reg1, u32(0)))
}

// fibLocal: "fib saddr|daddr type local", the address is one of this node's.
func (r *rule) fibLocal(which string) *rule {
	fib := &expr.Fib{Register: reg1, ResultADDRTYPE: true, FlagSADDR: which == "saddr", FlagDADDR: which == "daddr"}
	return r.add("fib "+which+" type local", fib, cmpEq(reg1, u32(unix.RTN_LOCAL)))
}

// notLoopback: "ip daddr != 127.0.0.0/8" (the first byte only, as nft compiles it) or
// "ip6 daddr != ::1".
func (r *rule) notLoopback(f family) *rule {
	if f.nfproto == unix.NFPROTO_IPV4 {
		e := append(matchFamily(f), &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg1,
			Base: expr.PayloadBaseNetworkHeader, Offset: f.saddrOffset + f.addrLen, Len: 1}, cmpNeq(reg1, []byte{127}))
		return r.add("ip daddr != 127.0.0.0/8", e...)
	}
	e := append(loadAddr(f, "daddr"), cmpNeq(reg1, netip.IPv6Loopback().AsSlice()))
	return r.add("ip6 daddr != ::1", e...)
}

// saddrIs: "ip saddr ADDR".
func (r *rule) saddrIs(f family, a netip.Addr) *rule {
	e := append(loadAddr(f, "saddr"), cmpEq(reg1, a.AsSlice()))
	return r.add(f.addr+" saddr "+a.String(), e...)
}

// saddrIn: "ip saddr @SET".
func (r *rule) saddrIn(f family, set string) *rule {
	return r.add(f.addr+" saddr", loadAddr(f, "saddr")...).inSet(set)
}

// updateSaddr: "update @SET { ip saddr }", adding the client to the set or refreshing its
// timeout.
func (r *rule) updateSaddr(f family, set string) *rule {
	e := append(loadAddr(f, "saddr"), &expr.Dynset{SrcRegKey: reg1, SetName: set, Operation: unix.NFT_DYNSET_OP_UPDATE})
	return r.add("update @"+set+" { "+f.addr+" saddr }", e...)
}

func (r *rule) l4proto(p string) *rule {
	return r.add("meta l4proto "+p, loadL4proto(reg1), cmpEq(reg1, []byte{protoNumber(p)}))
}

// numgenZero: "numgen random mod N == 0", true once in N.
func (r *rule) numgenZero(n int) *rule {
	return r.add(fmt.Sprintf("numgen random mod %d == 0", n),
		&expr.Numgen{Register: reg1, Modulus: uint32(n), Type: unix.NFT_NG_RANDOM}, cmpEq(reg1, u32(0)))
}

func loadMark() *expr.Meta { return &expr.Meta{Key: expr.MetaKeyMARK, Register: reg1} }

func setMark() *expr.Meta {
	return &expr.Meta{Key: expr.MetaKeyMARK, Register: reg1, SourceRegister: true}
}

// markClear: "meta mark & BIT == 0".
func (r *rule) markClear(bit uint32) *rule {
	return r.add(fmt.Sprintf("meta mark & 0x%x == 0", bit), loadMark(),
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: u32(bit), Xor: u32(0)}, cmpEq(reg1, u32(0)))
}

// markOr: "meta mark set meta mark | BIT".
func (r *rule) markOr(bit uint32) *rule {
	return r.add(fmt.Sprintf("meta mark set meta mark | 0x%x", bit), loadMark(),
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: u32(^bit), Xor: u32(bit)}, setMark())
}

// markXor: "meta mark set meta mark ^ BIT".
func (r *rule) markXor(bit uint32) *rule {
	return r.add(fmt.Sprintf("meta mark set meta mark ^ 0x%x", bit), loadMark(),
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: u32(0xffffffff), Xor: u32(bit)}, setMark())
}

// dnat: "dnat ip to ADDR:PORT" (after a protocol match, which a port translation needs).
func (r *rule) dnat(f family, to netip.AddrPort) *rule {
	return r.add("dnat "+f.addr+" to "+to.String(),
		&expr.Immediate{Register: reg1, Data: to.Addr().AsSlice()},
		&expr.Immediate{Register: reg2, Data: binaryutil.BigEndian.PutUint16(to.Port())},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(f.nfproto), RegAddrMin: reg1, RegAddrMax: reg1,
			RegProtoMin: reg2, RegProtoMax: reg2, Specified: true})
}

func (r *rule) masqueradeFullyRandom() *rule {
	return r.add("masquerade fully-random", &expr.Masq{FullyRandom: true})
}

func (r *rule) rejectTCPReset() *rule {
	return r.add("reject with tcp reset", &expr.Reject{Type: unix.NFT_REJECT_TCP_RST})
}

// rejectPort: "reject", ICMP or ICMPv6 port unreachable as the packet's family needs.
func (r *rule) rejectPort() *rule {
	return r.add("reject", &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH})
}

func (r *rule) jump(chain string) *rule {
	return r.add("jump "+chain, &expr.Verdict{Kind: expr.VerdictJump, Chain: chain})
}

func (r *rule) goTo(chain string) *rule {
	return r.add("goto "+chain, &expr.Verdict{Kind: expr.VerdictGoto, Chain: chain})
}

func (r *rule) ret() *rule { return r.add("return", &expr.Verdict{Kind: expr.VerdictReturn}) }

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

// dnatPick: "dnat ip to FRONTEND . numgen random mod N map @SET", the endpoint SET holds
// under the frontend's key and a random index below n.
func (r *rule) dnatPick(kind flatKind, f family, n int, set string) *rule {
	var e []expr.Any
	next := uint32(reg32)
	if kind == flatNodePort {
		e = []expr.Any{loadL4proto(reg1), loadDport(reg32 + 1)}
		next = reg32 + 2
	} else {
		e = loadAddr(f, "daddr")[2:] // the family is matched already
		next = reg32 + f.addrLen/4
		e = append(e, loadL4proto(next), loadDport(next+1))
		next += 2
	}
	// The endpoint's address lands in register 1 and its port right after.
	port := reg32 + f.addrLen/4
	e = append(e,
		&expr.Numgen{Register: next, Modulus: uint32(n), Type: unix.NFT_NG_RANDOM},
		&expr.Lookup{SourceRegister: reg1, SetName: set, DestRegister: reg1, IsDestRegSet: true},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(f.nfproto), RegAddrMin: reg1, RegAddrMax: reg1,
			RegProtoMin: port, RegProtoMax: port, Specified: true})
	return r.add(fmt.Sprintf("dnat %s to %s . numgen random mod %d map @%s", f.addr, frontendText(kind, f), n, set), e...)
}

// addrPairIn: "ip saddr . ip daddr @SET".
func (r *rule) addrPairIn(f family, set string) *rule {
	e := append(loadAddr(f, "saddr"), &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg32 + f.addrLen/4,
		Base: expr.PayloadBaseNetworkHeader, Offset: f.saddrOffset + f.addrLen, Len: f.addrLen})
	return r.add(f.addr+" saddr . "+f.addr+" daddr", e...).inSet(set)
}
