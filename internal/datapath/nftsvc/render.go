package nftsvc

import (
	"fmt"
	"net/netip"
	"slices"

	"sigs.k8s.io/knftables"

	"github.com/twill-net/twill/internal/datapath"
)

// skeleton is what the table holds with no service: the hooks, the dispatch through the
// global maps, rejection of frontends without endpoints, and masquerading.
func skeleton() *objects {
	o := newObjects()
	base := func(name string, typ knftables.BaseChainType, hook knftables.BaseChainHook, prio knftables.BaseChainPriority, jump string) {
		c := o.chain(name, "")
		c.base = &baseChain{typ: typ, hook: hook, priority: prio}
		if typ == knftables.FilterType {
			// Only new connections are refused: one that was translated before its service
			// lost its endpoints still carries the frontend address here (before DNAT).
			c.add(newRule().ctStateNew().jump(jump))
			return
		}
		c.add(newRule().jump(jump))
	}
	// Frontends are translated where a connection's first packet enters: prerouting for pods
	// and the outside, output for the node's own processes.
	base(chainNatPrerouting, knftables.NATType, knftables.PreroutingHook, knftables.DNATPriority, chainServices)
	// Numbers where nft 1.0 knows the names only in prerouting (dstnat) and postrouting.
	base(chainNatOutput, knftables.NATType, knftables.OutputHook, "-100", chainServices)
	base(chainNatPostrouting, knftables.NATType, knftables.PostroutingHook, knftables.SNATPriority, chainMasquerade)
	// Rejection happens just before translation (a frontend without endpoints has nothing to
	// translate to), in filter chains since nat chains see no packet but a connection's first.
	base(chainFilterPrerouting, knftables.FilterType, knftables.PreroutingHook, "-110", chainRejectCheck)
	base(chainFilterOutput, knftables.FilterType, knftables.OutputHook, "-110", chainRejectCheck)

	svc := o.chain(chainServices, "")
	check := o.chain(chainRejectCheck, "")
	for _, f := range families {
		svc.add(newRule().frontendKey(f).vmap(frontendMap(f)))
		check.add(newRule().frontendKey(f).inSet(noEndpointSet(f)).goTo(chainReject))
	}
	// NodePorts answer on every local address but loopback, whatever the interface.
	for _, f := range families {
		svc.add(newRule().fibLocal("daddr").notLoopback(f).protoPortKey().vmap(nodePortMap(f)))
		check.add(newRule().fibLocal("daddr").notLoopback(f).protoPortKey().inSet(noEndpointNodePortSet(f)).goTo(chainReject))
	}
	rej := o.chain(chainReject, "")
	rej.add(newRule().l4proto("tcp").rejectTCPReset())
	rej.add(newRule().rejectPort())

	// The mark is cleared so that it does not follow the packet anywhere else (an
	// encapsulation, another namespace).
	masq := o.chain(chainMasquerade, "")
	for _, f := range families { // hairpin on the flat path
		masq.add(newRule().addrPairIn(f, hairpinSet(f)).markOr(MasqueradeMark))
	}
	masq.add(newRule().markClear(MasqueradeMark).ret())
	masq.add(newRule().markXor(MasqueradeMark))
	masq.add(newRule().masqueradeFullyRandom())
	return o
}

// renderService returns the objects one service owns. An external IP is rendered for a port
// only if mayServe says so (see claims); nil allows all.
func renderService(s *datapath.Service, mayServe func(netip.Addr, *datapath.ServicePort) bool) *objects {
	r := &renderer{o: newObjects(), mayServe: mayServe}
	for _, f := range families {
		clusterIPs, externalIPs := ofFamily(s.ClusterIPs, f), ofFamily(s.ExternalIPs, f)
		if len(clusterIPs) == 0 && len(externalIPs) == 0 {
			continue
		}
		for i := range s.Ports {
			r.port(s, &s.Ports[i], f, clusterIPs, externalIPs)
		}
	}
	return r.o
}

func ofFamily(addrs []netip.Addr, f family) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		if familyOf(a) == f {
			out = append(out, a.Unmap())
		}
	}
	return out
}

func backendsOfFamily(bs []datapath.Backend, f family) []datapath.Backend {
	var out []datapath.Backend
	for _, b := range bs {
		if familyOf(b.Addr) == f {
			b.Addr = b.Addr.Unmap()
			out = append(out, b)
		}
	}
	return out
}

// renderer renders one service into o.
type renderer struct {
	o        *objects
	mayServe func(netip.Addr, *datapath.ServicePort) bool
}

// port renders one port of s in family f: a cluster chain (cluster IPs) and an external
// chain (NodePort, external IPs) that each pick one of their endpoints' chains, and the
// frontend elements leading to them, or to rejection when a chain would have no endpoint.
func (r *renderer) port(s *datapath.Service, p *datapath.ServicePort, f family, clusterIPs, externalIPs []netip.Addr) {
	o := r.o
	proto := protoName(p.Protocol)
	all, local := backendsOfFamily(p.Backends, f), backendsOfFamily(p.LocalBackends, f)
	if r.mayServe != nil {
		externalIPs = slices.DeleteFunc(slices.Clone(externalIPs), func(a netip.Addr) bool { return !r.mayServe(a, p) })
	}

	internal, external := all, all
	if s.InternalLocal {
		internal = local
	}
	if s.ExternalLocal {
		external = local
	}
	if s.AffinityTimeout == 0 && !s.ExternalLocal {
		r.flat(s, p, f, clusterIPs, externalIPs, internal, external)
		return
	}
	// Names and comments of the port's own chains (the flat path has none: a Full renders
	// every service, and these cost a hash and a format each).
	id := portID(s.Key, *p)
	desc := fmt.Sprintf("%s %d/%s", s.Key, p.Port, proto)
	if p.Name != "" {
		desc += " (" + p.Name + ")"
	}
	svc := clusterChain(f, id)
	if len(internal) > 0 {
		r.pick(o.chain(svc, desc+" cluster"), s, f, id, proto, internal)
	}
	for _, a := range clusterIPs {
		frontend(o, f, len(internal) > 0, svc, a.String(), proto, p.Port)
	}

	hasExternal := p.NodePort != 0 && len(clusterIPs) > 0 || len(externalIPs) > 0
	if !hasExternal {
		return
	}
	ext := externalChain(f, id)
	if len(external) > 0 {
		c := o.chain(ext, desc+" external")
		if s.ExternalLocal {
			// The node's own connections have no source to preserve and would find no
			// local endpoint on other nodes: they take the cluster path, masqueraded.
			if len(internal) > 0 {
				c.add(newRule().fibLocal("saddr").markOr(MasqueradeMark).goTo(svc))
			}
		} else {
			// Masqueraded so that replies come back through this node, which undoes the DNAT.
			c.add(newRule().markOr(MasqueradeMark))
		}
		r.pick(c, s, f, id, proto, external)
	}
	for _, a := range externalIPs {
		frontend(o, f, len(external) > 0, ext, a.String(), proto, p.Port)
	}
	if p.NodePort != 0 && len(clusterIPs) > 0 {
		if len(external) > 0 {
			o.element(nodePortMap(f), "goto "+ext, proto, fmt.Sprint(p.NodePort))
		} else {
			o.element(noEndpointNodePortSet(f), "", proto, fmt.Sprint(p.NodePort))
		}
	}
}

func frontend(o *objects, f family, hasEndpoints bool, chain, addr, proto string, port uint16) {
	if hasEndpoints {
		o.element(frontendMap(f), "goto "+chain, addr, proto, fmt.Sprint(port))
	} else {
		o.element(noEndpointSet(f), "", addr, proto, fmt.Sprint(port))
	}
}

// pick appends to c the rules choosing one of backends (not empty): the endpoint this client
// reached last, with affinity, else one at random.
//
// The random choice is a cascade of rules rather than one numgen lookup in a verdict map:
// measured on Linux 6.18, both maps the choice could use cost the kernel time that grows
// with the square of the table. An anonymous map per chain makes every transaction walk its
// whole list of changes once per such map (__nft_set_trans_bind), so a Full of 10,000
// services took 16 s of kernel time; one named map for all (keys at a per-chain offset) is
// walked whole by the table validation once per chain referring to it, so even adding one
// service to 10,000 took 16 s. A cascade costs a new connection up to one comparison per
// endpoint (not per service) and adds no set at all.
//
// Affinity costs one set lookup per endpoint, as in kube-proxy. A single per-port map from
// client to endpoint cannot do it: nft cannot look up a key joining a packet field and a
// constant, the packet path cannot write verdicts into a map, and a map from client to
// address . port (DNAT straight from the map) could neither refresh its timeout on use nor
// see hairpin connections.
func (r *renderer) pick(c *chain, s *datapath.Service, f family, id, proto string, backends []datapath.Backend) {
	chains := make([]string, len(backends))
	for i, b := range backends {
		chains[i] = endpointChain(f, id, b)
		endpoint(r.o, s, f, chains[i], proto, b)
		if s.AffinityTimeout > 0 {
			c.add(newRule().saddrIn(f, affinitySet(chains[i], s.AffinityTimeout)).goTo(chains[i]))
		}
	}
	if len(chains) == 1 {
		c.add(newRule().goTo(chains[0]))
		return
	}
	// Endpoint i of n is taken with probability 1/(n-i) once the ones before it were not:
	// 1/n each. (numgen draws anew in every rule.)
	n := len(chains)
	for i, ch := range chains[:n-1] {
		c.add(newRule().numgenZero(n - i).goTo(ch))
	}
	c.add(newRule().goTo(chains[n-1]))
}

// endpoint adds the chain that sends a connection to b: marked for masquerade when the client
// is b itself (hairpin: b would otherwise answer itself directly, from an address the client
// did not dial), remembered for affinity, and translated.
func endpoint(o *objects, s *datapath.Service, f family, name, proto string, b datapath.Backend) {
	if o.chains[name] != nil { // shared by the cluster and external chains
		return
	}
	c := o.chain(name, "")
	c.add(newRule().saddrIs(f, b.Addr).markOr(MasqueradeMark))
	if s.AffinityTimeout > 0 {
		set := affinitySet(name, s.AffinityTimeout)
		o.sets[set] = &affinity{typ: f.addrType, timeout: s.AffinityTimeout}
		c.add(newRule().updateSaddr(f, set))
	}
	c.add(newRule().l4proto(proto).dnat(f, netip.AddrPortFrom(b.Addr, b.Port)))
}
