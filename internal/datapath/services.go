package datapath

import (
	"context"
	"net/netip"
	"time"
)

// ServiceKey names a Kubernetes Service.
type ServiceKey struct {
	Namespace, Name string
}

func (k ServiceKey) String() string { return k.Namespace + "/" + k.Name }

// Service is one Kubernetes Service as one node's datapath serves it: where clients reach it
// (frontends) and where each port sends them (backends). The service calculator has already
// applied the upstream rules about which endpoints are usable (ready, or serving-and-terminating
// when none is ready) and which are local, so the datapath only routes: it never reads an
// EndpointSlice condition itself.
//
// A Service is a value: the datapath may keep it, the calculator makes a new one on every change.
type Service struct {
	Key ServiceKey
	// ClusterIPs are the service's cluster addresses (one per family). Empty for a headless
	// service, which the calculator leaves out altogether.
	ClusterIPs []netip.Addr
	// ExternalIPs are spec.externalIPs and the load balancer's status ingress IPs: addresses
	// outside the cluster that this node answers for on the service's ports.
	ExternalIPs []netip.Addr
	// ExternalLocal is externalTrafficPolicy Local: traffic arriving through a NodePort, an
	// external IP or a load balancer IP goes only to LocalBackends and keeps its source address
	// (no masquerade). Without it such traffic goes to Backends, masqueraded so replies return
	// through this node.
	ExternalLocal bool
	// InternalLocal is internalTrafficPolicy Local: traffic to a cluster IP goes only to
	// LocalBackends.
	InternalLocal bool
	// AffinityTimeout is sessionAffinity ClientIP's timeout; zero means no affinity. With it, a
	// client address keeps reaching the same backend while it sends within the timeout.
	AffinityTimeout time.Duration
	Ports           []ServicePort
}

// ServicePort is one port of a Service with the backends it sends to.
type ServicePort struct {
	Name     string
	Protocol Protocol
	// Port is the frontend port on ClusterIPs and ExternalIPs.
	Port uint16
	// NodePort, when not zero, is served on every local address of the node (not loopback).
	NodePort uint16
	// Backends are the usable endpoints of the whole cluster for this port (target port
	// resolved, named target ports included), sorted; empty means the port rejects new
	// connections at once (TCP reset / ICMP port unreachable) instead of letting them time out.
	Backends []Backend
	// LocalBackends are the usable endpoints on this node, for the Local traffic policies
	// (the calculator applies the terminating fallback among local endpoints alone, as upstream
	// does). A subset of Backends' addresses only when the same endpoints are ready/serving.
	LocalBackends []Backend
}

// Backend is one endpoint of a service port.
type Backend struct {
	Addr netip.Addr
	Port uint16
	// Node is the endpoint's node name, when the EndpointSlice says.
	Node string
}

// ServiceChanges is what the calculator hands the datapath after one or more events.
type ServiceChanges struct {
	// Full says Set lists every service there is: anything the datapath serves that is not in
	// Set goes. A full sync (the first after a start, or a resync) must replace the old state
	// in one step, with no moment where a service that exists in both is missing.
	Full bool
	// Set holds services added or changed (only those, unless Full).
	Set []Service
	// Removed names services that are gone (never with Full).
	Removed []ServiceKey
}

// ServiceReconciler makes the kernel serve services. Work per call is proportional to the
// services named in it, not to the number served (the "flat cost" a datapath must keep); it
// is idempotent (setting a service to what it already is changes nothing) and touches only
// what twill owns.
type ServiceReconciler interface {
	ApplyServices(ctx context.Context, ch ServiceChanges) error
}
