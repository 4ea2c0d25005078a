package cniserver_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/twill-net/twill/internal/cniproto"
	"github.com/twill-net/twill/internal/cniserver"
	"github.com/twill-net/twill/internal/cniserver/cnitest"
)

// ADD calls BeforeReady with the pod and the addresses it gave, before it plumbs and answers; when the
// hook fails (the agent could not put the pod's policy in force) ADD fails and undoes the
// endpoint.
func TestAddWaitsForBeforeReady(t *testing.T) {
	var seen []cniserver.Endpoint
	var fail error
	f := newFixture(t, func(c *cniserver.Config) {
		c.BeforeReady = func(_ context.Context, ep cniserver.Endpoint) error {
			seen = append(seen, ep)
			return fail
		}
	})
	node := handleIn(t, f.node)

	req := request("hooked", cnitest.NewNetns(t, "pod"))
	res := f.add(req)
	if len(seen) != 1 {
		t.Fatalf("BeforeReady called %d times, want 1", len(seen))
	}
	var gave []netip.Addr
	for _, ipc := range res.IPs {
		a, _ := netip.AddrFromSlice(ipc.Address.IP)
		gave = append(gave, a.Unmap())
	}
	ep := seen[0]
	if ep.PodNamespace != req.PodNamespace || ep.PodName != req.PodName || ep.ContainerID != req.ContainerID ||
		ep.IfName != req.IfName || !slices.Equal(ep.IPs, gave) {
		t.Errorf("BeforeReady got %+v, want pod %s/%s %s/%s with the result's addresses %v",
			ep, req.PodNamespace, req.PodName, req.ContainerID, req.IfName, gave)
	}

	fail = errors.New("nft refused")
	req = request("refused", cnitest.NewNetns(t, "pod"))
	status, body := f.call(cniproto.PathAdd, req)
	expectCNIError(t, status, body, types.ErrInternal, "policy", "nft refused")
	if f.alloc.Holds(handleOf(req)) {
		t.Error("ADD failed by BeforeReady kept its addresses")
	}
	if linkExists(node, cniserver.HostVethName(handleOf(req))) {
		t.Error("ADD failed by BeforeReady left its host veth")
	}
}
