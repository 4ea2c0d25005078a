// Package policy is the policy calculator: NetworkPolicies, ClusterNetworkPolicies (Admin and
// Baseline tiers) and the labels of pods, namespaces and nodes in; a datapath.PolicyState out,
// compiled against numeric identities (one per distinct set of labels that some selector uses)
// so that pod churn changes set membership, not rules. It is pure: no syscalls and no
// informers; the agent feeds it plain inputs in any order, and the same inputs give the same
// state. Explain and Audit answer questions from the same compiled state the datapath renders.
package policy

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	"github.com/twill-net/twill/internal/datapath"
)

// NamespaceNameLabel is the label the API server puts on every namespace with its name; the
// calculator adds it too, so namespace selectors on it work whatever the input carries.
const NamespaceNameLabel = "kubernetes.io/metadata.name"

// Endpoint is a pod on the pod network, as policy sees it.
type Endpoint struct {
	Namespace, Name string
	Labels          map[string]string
	IPs             []netip.Addr
	Node            string
	// Ports are the container ports with a name, which named ports in policies resolve to.
	Ports []ContainerPort
}

// ContainerPort is a named port a pod declares.
type ContainerPort struct {
	Name     string
	Protocol datapath.Protocol
	Port     uint16
}

// Namespace is a namespace and its labels.
type Namespace struct {
	Name   string
	Labels map[string]string
}

// Node is a node, for ClusterNetworkPolicy node peers.
type Node struct {
	Name   string
	Labels map[string]string
	IPs    []netip.Addr
}

// Ref names the endpoint.
func (e Endpoint) Ref() datapath.PodRef { return datapath.PodRef{Namespace: e.Namespace, Name: e.Name} }

// EndpointFromPod reads a pod. ok is false for host-network pods: they share their node's
// addresses and policy neither selects them nor matches them as pods.
func EndpointFromPod(pod *corev1.Pod) (e Endpoint, ok bool) {
	if pod.Spec.HostNetwork {
		return Endpoint{}, false
	}
	e = Endpoint{Namespace: pod.Namespace, Name: pod.Name, Labels: pod.Labels, Node: pod.Spec.NodeName}
	for _, ip := range pod.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			e.IPs = append(e.IPs, a)
		}
	}
	if len(e.IPs) == 0 && pod.Status.PodIP != "" {
		if a, err := netip.ParseAddr(pod.Status.PodIP); err == nil {
			e.IPs = append(e.IPs, a)
		}
	}
	// Restartable init containers (sidecars) serve ports as well as regular containers.
	containers := append(append([]corev1.Container(nil), pod.Spec.InitContainers...), pod.Spec.Containers...)
	for _, c := range containers {
		for _, p := range c.Ports {
			if p.Name == "" || p.ContainerPort <= 0 || p.ContainerPort > 65535 {
				continue
			}
			proto := datapath.ProtocolTCP
			if p.Protocol != "" {
				var err error
				if proto, err = datapath.ParseProtocol(string(p.Protocol)); err != nil {
					continue
				}
			}
			e.Ports = append(e.Ports, ContainerPort{Name: p.Name, Protocol: proto, Port: uint16(p.ContainerPort)})
		}
	}
	return e, true
}

// NamespaceFromObject reads a namespace.
func NamespaceFromObject(ns *corev1.Namespace) Namespace {
	return Namespace{Name: ns.Name, Labels: ns.Labels}
}

// NodeFromObject reads a node; its addresses are those of status.addresses that are IPs, as
// ClusterNetworkPolicy's node peers define.
func NodeFromObject(n *corev1.Node) Node {
	node := Node{Name: n.Name, Labels: n.Labels}
	for _, a := range n.Status.Addresses {
		if ip, err := netip.ParseAddr(a.Address); err == nil {
			node.IPs = append(node.IPs, ip)
		}
	}
	return node
}
