package service

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/twill-net/twill/internal/datapath"
)

// DefaultAffinityTimeout is sessionAffinity ClientIP's timeout when the Service gives none
// (the API's default, three hours).
const DefaultAffinityTimeout = 10800 * time.Second

// labelServiceProxyName on a Service says which proxy serves it; like kube-proxy started
// without a proxy name, twill serves only the Services without the label.
const labelServiceProxyName = "service.kubernetes.io/service-proxy-name"

// frontendsOf reads where clients reach a Service: its datapath.Service with ports that have
// no backends yet. served is false for the Services a node does not serve at all: type
// ExternalName (a DNS alias, no address of its own), headless ones (clusterIP None: DNS hands
// out the endpoints' addresses directly), ones not yet given a cluster IP, and ones labelled
// for another proxy.
func frontendsOf(svc *corev1.Service) (s datapath.Service, served bool) {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return s, false
	}
	if _, ok := svc.Labels[labelServiceProxyName]; ok {
		return s, false // another proxy serves it
	}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP} // objects written before dual-stack fill ClusterIP only
	}
	s.Key = datapath.ServiceKey{Namespace: svc.Namespace, Name: svc.Name}
	for _, ip := range ips {
		if ip == corev1.ClusterIPNone {
			return datapath.Service{}, false
		}
		if a, err := netip.ParseAddr(ip); err == nil {
			s.ClusterIPs = appendFamily(s.ClusterIPs, a.Unmap())
		}
	}
	if len(s.ClusterIPs) == 0 {
		return datapath.Service{}, false
	}

	// As kube-proxy does (one proxier per family), an external address is served only in a
	// family the service has a cluster IP of: a single-stack IPv4 service has no IPv6 backends
	// to send an IPv6 external address to.
	var external []netip.Addr
	addExternal := func(ip string) {
		if a, err := netip.ParseAddr(ip); err == nil && hasFamily(s.ClusterIPs, a.Unmap()) {
			external = append(external, a.Unmap())
		}
	}
	for _, ip := range svc.Spec.ExternalIPs {
		addExternal(ip)
	}
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		// An ingress in Proxy mode is reached through the load balancer's own proxy, which
		// sends to the node ports: the node must not capture the balancer's address itself.
		if ing.IP == "" || (ing.IPMode != nil && *ing.IPMode == corev1.LoadBalancerIPModeProxy) {
			continue
		}
		addExternal(ing.IP)
	}
	slices.SortFunc(external, netip.Addr.Compare)
	s.ExternalIPs = slices.Compact(external)

	exposesNodePorts := svc.Spec.Type == corev1.ServiceTypeNodePort || svc.Spec.Type == corev1.ServiceTypeLoadBalancer
	// externalTrafficPolicy means something only for a service reachable from outside (the
	// API refuses it elsewhere, but an object may predate that check).
	externallyAccessible := exposesNodePorts || len(svc.Spec.ExternalIPs) > 0
	s.ExternalLocal = externallyAccessible && svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
	s.InternalLocal = svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		s.AffinityTimeout = DefaultAffinityTimeout
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil && *c.ClientIP.TimeoutSeconds > 0 {
			s.AffinityTimeout = time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
		}
	}

	for _, p := range svc.Spec.Ports {
		proto, ok := protocolOf(p.Protocol)
		if !ok || p.Port <= 0 || p.Port > 65535 {
			continue
		}
		sp := datapath.ServicePort{Name: p.Name, Protocol: proto, Port: uint16(p.Port)}
		if exposesNodePorts && p.NodePort > 0 && p.NodePort <= 65535 {
			sp.NodePort = uint16(p.NodePort)
		}
		s.Ports = append(s.Ports, sp)
	}
	slices.SortFunc(s.Ports, func(a, b datapath.ServicePort) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port))
	})
	return s, true
}

// appendFamily appends a unless the list already has an address of its family (ClusterIPs
// holds at most one per family; a second would be a malformed object).
func appendFamily(list []netip.Addr, a netip.Addr) []netip.Addr {
	if hasFamily(list, a) {
		return list
	}
	return append(list, a)
}

func hasFamily(list []netip.Addr, a netip.Addr) bool {
	return slices.ContainsFunc(list, func(x netip.Addr) bool { return x.Is4() == a.Is4() })
}

// protocolOf reads a Kubernetes protocol; empty is TCP, the API's default.
func protocolOf(p corev1.Protocol) (datapath.Protocol, bool) {
	if p == "" {
		return datapath.ProtocolTCP, true
	}
	proto, err := datapath.ParseProtocol(string(p))
	return proto, err == nil
}

// sliceInfo is what the calculator keeps of one EndpointSlice: its ports and its endpoints'
// first addresses and conditions, copied out of the API object (which the informer owns).
type sliceInfo struct {
	ports     []slicePort
	endpoints []endpoint
}

type slicePort struct {
	name     string
	protocol datapath.Protocol
	port     uint16
}

// endpoint is one endpoint with its conditions read as kube-proxy reads them: an unset ready
// or serving means true, an unset terminating means false.
type endpoint struct {
	addr                        netip.Addr
	node                        string
	ready, serving, terminating bool
}

// sliceInfoOf copies what matters of a slice. Slices of FQDN addresses are not for a proxy
// (nil); an address of the other family than the slice's addressType is a malformed entry and
// skipped. Only an endpoint's first address counts: the API says the others are the same
// endpoint and consumers use the first.
func sliceInfoOf(s *discoveryv1.EndpointSlice) *sliceInfo {
	var want4 bool
	switch s.AddressType {
	case discoveryv1.AddressTypeIPv4:
		want4 = true
	case discoveryv1.AddressTypeIPv6:
	default:
		return nil
	}
	info := &sliceInfo{}
	for _, p := range s.Ports {
		if p.Port == nil || *p.Port <= 0 || *p.Port > 65535 {
			continue // a port the controller could not resolve for these endpoints
		}
		var proto corev1.Protocol
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		pr, ok := protocolOf(proto)
		if !ok {
			continue
		}
		var name string
		if p.Name != nil {
			name = *p.Name
		}
		info.ports = append(info.ports, slicePort{name: name, protocol: pr, port: uint16(*p.Port)})
	}
	for _, e := range s.Endpoints {
		if len(e.Addresses) == 0 {
			continue
		}
		a, err := netip.ParseAddr(e.Addresses[0])
		if err != nil || a.Is4() != want4 {
			continue
		}
		ep := endpoint{
			addr:        a,
			ready:       e.Conditions.Ready == nil || *e.Conditions.Ready,
			serving:     e.Conditions.Serving == nil || *e.Conditions.Serving,
			terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
		}
		if e.NodeName != nil {
			ep.node = *e.NodeName
		}
		info.endpoints = append(info.endpoints, ep)
	}
	return info
}

// candidate is an endpoint of one service port, target port resolved.
type candidate struct {
	endpoint
	port uint16
}

// endpointsForPort gathers, from every slice of a service, the endpoints of the service port
// p: those of slice ports with p's name and protocol (the slice has already resolved a named
// target port to each endpoint's number), in families the service has a cluster IP of.
// The same address and port may be in two slices (an endpoint moving between them); the
// entries merge into one, so a backend is never counted twice.
func endpointsForPort(bySlice map[string]*sliceInfo, svc *datapath.Service, p datapath.ServicePort) []candidate {
	merged := map[netip.AddrPort]endpoint{}
	for _, info := range bySlice {
		for _, sp := range info.ports {
			if sp.name != p.Name || sp.protocol != p.Protocol {
				continue
			}
			for _, e := range info.endpoints {
				if !hasFamily(svc.ClusterIPs, e.addr) {
					continue
				}
				k := netip.AddrPortFrom(e.addr, sp.port)
				if old, dup := merged[k]; dup {
					e = better(old, e)
				}
				merged[k] = e
			}
		}
	}
	out := make([]candidate, 0, len(merged))
	for k, e := range merged {
		out = append(out, candidate{endpoint: e, port: k.Port()})
	}
	return out
}

// better picks which of two entries of the same endpoint stands, whatever order the slices
// came in. As kube-proxy does, a non-terminating entry wins over a terminating one: the pod
// network may give a new pod the address of one still terminating. Then the more usable
// (ready, then serving), then the one with a node name, then the smaller node name: slices of
// one service are read in map order, and the choice must not depend on it.
func better(a, b endpoint) endpoint {
	rank := func(e endpoint) int {
		r := 0
		if !e.terminating {
			r += 4
		}
		if e.ready {
			r += 2
		}
		if e.serving {
			r++
		}
		return r
	}
	if ra, rb := rank(a), rank(b); ra != rb {
		if ra > rb {
			return a
		}
		return b
	}
	if (a.node == "") != (b.node == "") {
		if a.node != "" {
			return a
		}
		return b
	}
	if b.node < a.node {
		return b
	}
	return a
}

// usableBackends applies kube-proxy's rule for which endpoints receive traffic: the ready
// ones; when none is ready, those still serving while terminating (so a rolling update or a
// scale-down to zero drains instead of dropping). The rule is applied twice: over the whole
// cluster for Backends and over this node's endpoints alone for LocalBackends, so a node whose
// local endpoints are all terminating still sends Local traffic to them.
func usableBackends(cands []candidate, node string) (cluster, local []datapath.Backend) {
	pick := func(keep func(candidate) bool) []datapath.Backend {
		var ready, terminating []datapath.Backend
		for _, c := range cands {
			if !keep(c) {
				continue
			}
			b := datapath.Backend{Addr: c.addr, Port: c.port, Node: c.node}
			switch {
			case c.ready:
				ready = append(ready, b)
			case c.serving && c.terminating:
				terminating = append(terminating, b)
			}
		}
		if len(ready) == 0 {
			ready = terminating
		}
		slices.SortFunc(ready, compareBackends)
		return ready
	}
	cluster = pick(func(candidate) bool { return true })
	local = pick(func(c candidate) bool { return node != "" && c.node == node })
	return cluster, local
}

func compareBackends(a, b datapath.Backend) int {
	return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Node, b.Node))
}

// equalServices says whether two computed services are the same (every slice in them is
// sorted, so element-wise comparison is enough).
func equalServices(a, b datapath.Service) bool {
	return a.Key == b.Key &&
		slices.Equal(a.ClusterIPs, b.ClusterIPs) &&
		slices.Equal(a.ExternalIPs, b.ExternalIPs) &&
		a.ExternalLocal == b.ExternalLocal &&
		a.InternalLocal == b.InternalLocal &&
		a.AffinityTimeout == b.AffinityTimeout &&
		slices.EqualFunc(a.Ports, b.Ports, equalPorts)
}

func equalPorts(a, b datapath.ServicePort) bool {
	return a.Name == b.Name && a.Protocol == b.Protocol && a.Port == b.Port && a.NodePort == b.NodePort &&
		slices.Equal(a.Backends, b.Backends) && slices.Equal(a.LocalBackends, b.LocalBackends)
}
