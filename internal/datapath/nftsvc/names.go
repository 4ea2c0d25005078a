package nftsvc

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"

	"github.com/twill-net/twill/internal/datapath"
)

// The table this reconciler owns (DESIGN convention 7). It is not the policy table "inet twill":
// each reconciler rebuilds its own table atomically (delete and re-create in one transaction)
// and must not wipe the other's rules while doing so.
const (
	TableFamily = knftables.InetFamily
	TableName   = "twill-services"
)

// MasqueradeMark is the packet mark bit that asks postrouting to masquerade a connection's
// first packet. kube-proxy uses 0x4000 (masquerade) and 0x8000 (drop), Calico the upper 16
// bits, Cilium bits 8-11; the policy datapath uses the conntrack mark, not the packet mark.
// The bit is cleared again before the packet leaves.
const MasqueradeMark = 0x2000

// Fixed chains.
const (
	chainNatPrerouting    = "nat-prerouting"
	chainNatOutput        = "nat-output"
	chainNatPostrouting   = "nat-postrouting"
	chainFilterPrerouting = "filter-prerouting"
	chainFilterOutput     = "filter-output"
	chainServices         = "services"       // frontend dispatch, from prerouting and output
	chainMasquerade       = "masquerading"   // postrouting: masquerade marked packets
	chainRejectCheck      = "no-endpoints"   // frontends without endpoints go to reject
	chainReject           = "reject-service" // TCP reset, ICMP port unreachable otherwise
)

// family is the spelling of one IP family in rules and set types.
type family struct {
	suffix      string // "4" or "6", appended to object names
	addr        string // payload keyword: ip or ip6
	addrType    string // set key type
	nfproto     byte   // NFPROTO_IPV4 or NFPROTO_IPV6
	saddrOffset uint32 // in the network header; the destination follows
	addrLen     uint32
}

var (
	ipv4     = family{suffix: "4", addr: "ip", addrType: "ipv4_addr", nfproto: unix.NFPROTO_IPV4, saddrOffset: 12, addrLen: 4}
	ipv6     = family{suffix: "6", addr: "ip6", addrType: "ipv6_addr", nfproto: unix.NFPROTO_IPV6, saddrOffset: 8, addrLen: 16}
	families = []family{ipv4, ipv6}
)

func familyOf(a netip.Addr) family {
	if a.Is4() && !a.Is4In6() {
		return ipv4
	}
	return ipv6
}

// Global maps and sets, one per family: frontends (cluster and external IPs) and NodePorts
// that have endpoints jump to their service chains; those without are rejected.
func frontendMap(f family) string   { return "frontends" + f.suffix } // addr . proto . port : verdict
func nodePortMap(f family) string   { return "nodeports" + f.suffix } // proto . port : verdict
func noEndpointSet(f family) string { return "no-endpoints" + f.suffix }
func noEndpointNodePortSet(f family) string {
	return "no-endpoint-nodeports" + f.suffix
}

// portID names one port of one service (stable across runs and restarts).
func portID(k datapath.ServiceKey, p datapath.ServicePort) string {
	return shortHash(fmt.Sprintf("%s/%s:%s/%d", k.Namespace, k.Name, p.Name, p.Protocol))
}

// Per service port and family: the chain cluster traffic takes, the chain external traffic
// (NodePort, external and load balancer IPs) takes, and one chain per endpoint.
func clusterChain(f family, id string) string  { return "svc" + f.suffix + "-" + id }
func externalChain(f family, id string) string { return "ext" + f.suffix + "-" + id }
func endpointChain(f family, id string, b datapath.Backend) string {
	return "ep" + f.suffix + "-" + id + "-" + shortHash(netip.AddrPortFrom(b.Addr, b.Port).String())[:8]
}

// affinitySet holds the clients that last reached one endpoint, for ClientIP affinity. Its name
// carries the timeout, so a new timeout is a new set (nft cannot change a set's timeout).
func affinitySet(epChain string, timeout time.Duration) string {
	return "aff-" + strings.TrimPrefix(epChain, "ep") + "-" + strconv.FormatInt(int64(timeout/time.Second), 10)
}

func protoName(p datapath.Protocol) string {
	switch p {
	case datapath.ProtocolTCP:
		return "tcp"
	case datapath.ProtocolUDP:
		return "udp"
	case datapath.ProtocolSCTP:
		return "sctp"
	}
	return strconv.Itoa(int(p))
}

func shortHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:6])
}
