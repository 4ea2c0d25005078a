// Package ipam is the address calculator: cluster-wide IPPools are cut into blocks, a node claims
// blocks through the Kubernetes API (one IPAMBlock object per block, so a claim is an atomic
// create), and the node's agent hands out addresses from its own blocks, recording each one on
// local disk so allocations survive an agent restart.
package ipam

import (
	"context"
	"net/netip"
)

// Handle names one attachment the way CNI does: container ID plus interface name.
type Handle struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// Owner is the attachment an address is given to, with the pod it belongs to so that leaked
// addresses can be found by comparing against the API's pods.
type Owner struct {
	Handle
	PodNamespace string `json:"podNamespace,omitempty"`
	PodName      string `json:"podName,omitempty"`
	PodUID       string `json:"podUID,omitempty"`
}

// Allocation is one address given to one owner, from a block of a pool.
type Allocation struct {
	Owner Owner        `json:"owner"`
	IP    netip.Addr   `json:"ip"`
	Block netip.Prefix `json:"block"`
	Pool  string       `json:"pool"`
}

// Allocator is what the agent's CNI server asks for addresses.
type Allocator interface {
	// Allocate gives the owner one address per address family the pools offer (IPv4, and IPv6
	// when there is an IPv6 pool). Asking again for the same handle returns the same addresses.
	Allocate(ctx context.Context, owner Owner) ([]Allocation, error)
	// Release frees every address of the handle; releasing an unknown handle is not an error.
	Release(ctx context.Context, h Handle) error
	// Allocations lists what is allocated on this node now.
	Allocations() []Allocation
}
