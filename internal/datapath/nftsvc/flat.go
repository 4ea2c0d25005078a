package nftsvc

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/twill-net/twill/internal/datapath"
)

// The flat path serves most services with set and map elements alone, no chain or rule of
// their own, so that adding, changing or removing one costs the same whatever the number
// of services. The kernel re-checks the whole table for loops in every transaction that
// adds a jump, a goto or a verdict-map element, and with a chain per service that check
// grows with the table (about 45 ms per change at 10,000 services here, measured by
// BenchmarkAddOneService); elements of sets and of maps to data cost a hash insert.
//
// A frontend that picks among n endpoints is a member of one set per kind and family
// ("cluster4-n2": cluster IP . protocol . port), and one rule per such set in the services
// chain translates its connections:
//
//	ip daddr . meta l4proto . th dport @cluster4-n2
//	    dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @cluster-backends4
//
// cluster-backends4 holds, per frontend, endpoint i (i < n) under the key frontend . i. The
// rules are per kind and n, not per service: a new connection costs one set lookup per n in
// use, and the choice one map lookup. External traffic (external and load balancer IPs, and
// NodePorts keyed by protocol . port) is marked for masquerade in its rule.
//
// A client that reaches itself through a service (hairpin) is masqueraded in postrouting:
// hairpin4 holds address . address for every endpoint of a flat service.
//
// Services with session affinity or externalTrafficPolicy Local keep chains of their own
// (see render.go); their changes cost the table check, which then walks only their chains.

// flatKind is the kind of frontend a flat rule serves.
type flatKind string

const (
	flatCluster  flatKind = "cluster"  // cluster IPs: ip daddr . proto . port
	flatExternal flatKind = "external" // external and load balancer IPs, masqueraded
	flatNodePort flatKind = "nodeport" // proto . port on a local address, masqueraded
)

// flatKey names one membership set and its rule.
type flatKey struct {
	f    family
	kind flatKind
	n    int
}

func (k flatKey) set() string { return fmt.Sprintf("%s%s-n%d", k.kind, k.f.suffix, k.n) }

func backendMap(kind flatKind, f family) string { return string(kind) + "-backends" + f.suffix }

func hairpinSet(f family) string { return "hairpin" + f.suffix }

// frontendFields is the key of kind's frontends.
func frontendFields(kind flatKind, f family) []string {
	if kind == flatNodePort {
		return []string{"inet_proto", "inet_service"}
	}
	return []string{f.addrType, "inet_proto", "inet_service"}
}

// frontendText is the same key as nft reads it from the packet.
func frontendText(kind flatKind, f family) string {
	if kind == flatNodePort {
		return "meta l4proto . th dport"
	}
	return f.addr + " daddr . meta l4proto . th dport"
}

func (k flatKey) def() *setDef { return &setDef{fields: frontendFields(k.kind, k.f)} }

// flatGlobals are the flat path's maps and sets that every table has.
func flatGlobals() map[string]*setDef {
	m := map[string]*setDef{}
	for _, f := range families {
		for _, kind := range []flatKind{flatCluster, flatExternal, flatNodePort} {
			m[backendMap(kind, f)] = &setDef{
				fields: append(frontendFields(kind, f), "integer"),
				data:   []string{f.addrType, "inet_service"},
				typeof: fmt.Sprintf("%s . numgen random mod 2 : %s daddr . th dport", frontendText(kind, f), f.addr),
			}
		}
		m[hairpinSet(f)] = &setDef{fields: []string{f.addrType, f.addrType}}
	}
	return m
}

// parseFlatSet is the flat key of a membership set's name, if it is one.
func parseFlatSet(name string) (flatKey, bool) {
	for _, kind := range []flatKind{flatCluster, flatExternal, flatNodePort} {
		for _, f := range families {
			if n, ok := strings.CutPrefix(name, string(kind)+f.suffix+"-n"); ok {
				if v, err := strconv.Atoi(n); err == nil && v > 0 {
					return flatKey{f: f, kind: kind, n: v}, true
				}
			}
		}
	}
	return flatKey{}, false
}

// rule is the services-chain rule that translates k's frontends.
func (k flatKey) rule() *rule {
	r := newRule()
	if k.kind == flatNodePort {
		r.fibLocal("daddr").notLoopback(k.f).protoPortKey()
	} else {
		r.frontendKey(k.f)
	}
	r.inSet(k.set())
	if k.kind != flatCluster {
		r.markOr(MasqueradeMark)
	}
	return r.dnatPick(k.kind, k.f, k.n, backendMap(k.kind, k.f))
}

// flat renders one port of s on the flat path: membership and endpoints of its cluster
// frontends (cluster IPs) and external ones (external IPs, NodePort).
func (r *renderer) flat(s *datapath.Service, p *datapath.ServicePort, f family, clusterIPs, externalIPs []netip.Addr, internal, external []datapath.Backend) {
	proto, port := protoName(p.Protocol), strconv.Itoa(int(p.Port))
	for _, a := range clusterIPs {
		r.flatFrontend(flatCluster, f, internal, a.String(), proto, port)
	}
	for _, a := range externalIPs {
		r.flatFrontend(flatExternal, f, external, a.String(), proto, port)
	}
	if p.NodePort != 0 && len(clusterIPs) > 0 {
		r.flatFrontend(flatNodePort, f, external, "", proto, strconv.Itoa(int(p.NodePort)))
	}
}

// flatFrontend adds one frontend: its membership and endpoints, or rejection without any.
func (r *renderer) flatFrontend(kind flatKind, f family, backends []datapath.Backend, addr, proto, port string) {
	key := []string{addr, proto, port}
	if kind == flatNodePort {
		key = key[1:]
	}
	if len(backends) == 0 {
		set := noEndpointSet(f)
		if kind == flatNodePort {
			set = noEndpointNodePortSet(f)
		}
		r.o.element(set, "", key...)
		return
	}
	k := flatKey{f: f, kind: kind, n: len(backends)}
	r.o.flat[k] = true
	r.o.element(k.set(), "", key...)
	for i, b := range backends {
		r.o.element(backendMap(kind, f), b.Addr.String()+" . "+strconv.Itoa(int(b.Port)), append(key, strconv.Itoa(i))...)
		r.o.hairpin[b.Addr.String()+" . "+b.Addr.String()] = hairpinSet(f)
	}
}
