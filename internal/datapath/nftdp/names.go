package nftdp

import (
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"regexp"

	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"

	"github.com/twill-net/twill/internal/datapath"
)

// The one table twill owns (DESIGN convention 7). Nothing outside it is ever read or written.
const (
	TableFamily = knftables.InetFamily
	TableName   = "twill"
)

// Chain names. Base chains are named after their hook.
const (
	chainForward = "forward"
	chainInput   = "input"
	chainOutput  = "output"
)

// Counters of verdicts that no policy rule makes.
const (
	counterOwnNode = "own-node"
	counterInvalid = "ct-invalid"
)

// family is the spelling of one IP family in rules and set types; every object that holds
// addresses exists once per family.
type family struct {
	suffix   string // "4" or "6", appended to object names
	addr     string // payload keyword: ip or ip6
	nfproto  string // meta nfproto value
	addrType string // set key type
	all      netip.Prefix
	// The kernel's view: the nfproto number, where the source address is in the network
	// header (the destination follows it) and how long an address is.
	nfprotoNum           byte
	saddrOffset, addrLen uint32
}

var (
	ipv4 = family{suffix: "4", addr: "ip", nfproto: "ipv4", addrType: "ipv4_addr", all: netip.MustParsePrefix("0.0.0.0/0"),
		nfprotoNum: unix.NFPROTO_IPV4, saddrOffset: 12, addrLen: 4}
	ipv6 = family{suffix: "6", addr: "ip6", nfproto: "ipv6", addrType: "ipv6_addr", all: netip.MustParsePrefix("::/0"),
		nfprotoNum: unix.NFPROTO_IPV6, saddrOffset: 8, addrLen: 16}
	families = []family{ipv4, ipv6}
)

func familyOf(a netip.Addr) family {
	if a.Is4() {
		return ipv4
	}
	return ipv6
}

// localField and peerField are the address fields holding the local pod and its peer: the
// destination is the local pod for ingress, the source for egress.
func localField(d datapath.Direction) string {
	if d == datapath.Ingress {
		return "daddr"
	}
	return "saddr"
}

func peerField(d datapath.Direction) string {
	if d == datapath.Ingress {
		return "saddr"
	}
	return "daddr"
}

func podsChain(f family) string                            { return "pods" + f.suffix }
func directionChain(d datapath.Direction, f family) string { return string(d) + f.suffix }

func tierChain(d datapath.Direction, f family, tier datapath.Tier) string {
	switch tier {
	case datapath.TierAdmin:
		return directionChain(d, f) + "-admin"
	case datapath.TierBaseline:
		return directionChain(d, f) + "-baseline"
	}
	return directionChain(d, f) + "-np"
}

// npRestChain holds the NetworkPolicy tier's lookups after the peer's port ranges.
func npRestChain(d datapath.Direction, f family) string {
	return tierChain(d, f, datapath.TierNetworkPolicy) + "-rest"
}

// Sets every state has.
func localSet(f family) string    { return "local" + f.suffix } // this node's pod addresses
func ownNodeSet(f family) string  { return "node" + f.suffix }  // this node's own addresses
func identityMap(f family) string { return "ids" + f.suffix }   // every pod address -> identity
func npMap(d datapath.Direction, f family, kind string) string {
	return "np-" + directionChain(d, f) + "-" + kind
}

// Sets named after the state's sets.
func identitySet(n datapath.SetName) string { return "i-" + safeName(string(n)) }
func subjectSet(n datapath.SetName, f family) string {
	return "s" + f.suffix + "-" + safeName(string(n))
}
func cidrSet(n datapath.SetName, f family) string { return "c" + f.suffix + "-" + safeName(string(n)) }
func namedPortSet(port string, f family) string   { return "n" + f.suffix + "-" + safeName(port) }

// Objects of one rule, named by a hash of its attribution ID (stable across runs); the
// render cache keeps them (ruleNames), as hashing every rule on every apply is not free.
func allowChain(hash string) string  { return "allow-" + hash }
func ruleCounter(hash string) string { return "r-" + hash }

func defaultDenyCounter(d datapath.Direction) string { return "default-deny-" + string(d) }

// namedRuleSet holds the (local pod . peer) pairs of an egress NetworkPolicy rule with a named
// port; kind is "id" (peer identities) or "net" (peer address ranges).
func namedRuleSet(a datapath.Attribution, f family, kind string) string {
	return "en" + f.suffix + "-" + shortHash(a.ID()) + "-" + kind
}

var plainName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$`)

// safeName keeps names nft reads as identifiers and hashes any other.
func safeName(s string) string {
	if plainName.MatchString(s) {
		return s
	}
	return "h" + shortHash(s)
}

func shortHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:6])
}
