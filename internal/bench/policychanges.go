package bench

import (
	"fmt"
	"maps"
	"net/netip"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/twill-net/twill/internal/datapath"
)

// round makes one change of every kind. Even rounds touch a pod of this node, odd rounds a
// pod elsewhere: a remote pod changes only the cluster-wide address map and identity sets,
// a local one also the flattened NetworkPolicy maps of this node.
func (b *policyBench) round(i int) error {
	local := i%2 == 0

	// A label change: the pod's version flips between v1 and v2, which some policies select
	// (canaries), so its identity changes.
	idx := b.w.pick(local, i)
	pod := b.w.pods[idx]
	pod.Labels = maps.Clone(pod.Labels)
	if pod.Labels["version"] == "v2" {
		pod.Labels["version"] = "v1"
	} else {
		pod.Labels["version"] = "v2"
	}
	b.w.pods[idx] = pod
	if err := b.timed(changePodLabel, i, func() { b.calc.UpsertEndpoint(pod) }, func() error {
		return b.checkIdentity(pod.IPs[0])
	}); err != nil {
		return err
	}

	// A pod comes and goes.
	added := b.w.newPod(b.w.nextPod)
	b.w.nextPod++
	if local != (added.Node == b.w.localNode) {
		added.Node = b.w.localNode
		if !local {
			added.Node = nodeName(1 + i%(b.w.size.Nodes-1))
		}
	}
	added.IPs = []netip.Addr{b.w.freshAddr()}
	if err := b.timed(changePodAdd, i, func() { b.calc.UpsertEndpoint(added) }, func() error {
		if err := b.checkIdentity(added.IPs[0]); err != nil {
			return err
		}
		if local {
			return b.ns.nftGetElement("local4", added.IPs[0].String())
		}
		return nil
	}); err != nil {
		return err
	}
	if err := b.timed(changePodDelete, i, func() { b.calc.DeleteEndpoint(added.Namespace, added.Name) }, func() error {
		if err := b.ns.nftGetElement("ids4", added.IPs[0].String()); err == nil {
			return fmt.Errorf("address %s of a deleted pod is still in the identity map", added.IPs[0])
		}
		return nil
	}); err != nil {
		return err
	}

	// A policy comes, changes and goes.
	np := b.w.extraPolicy(i)
	id := datapath.Attribution{Tier: datapath.TierNetworkPolicy, Policy: datapath.PolicyRef{Namespace: np.Namespace, Name: np.Name},
		Direction: datapath.Ingress}
	if err := b.timed(changePolicyAdd, i, func() { b.calc.UpsertNetworkPolicy(np) }, func() error {
		return b.checkCounters(id.ID(), true)
	}); err != nil {
		return err
	}
	edited := np.DeepCopy()
	edited.Spec.Ingress = append(edited.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{
		From:  []networkingv1.NetworkPolicyPeer{{PodSelector: matchLabels("tier", "api")}},
		Ports: []networkingv1.NetworkPolicyPort{tcpPort(7000 + int32(i))}})
	second := id
	second.Index = 1
	if err := b.timed(changePolicyEdit, i, func() { b.calc.UpsertNetworkPolicy(edited) }, func() error {
		return b.checkCounters(second.ID(), true)
	}); err != nil {
		return err
	}
	return b.timed(changePolicyDelete, i, func() { b.calc.DeleteNetworkPolicy(np.Namespace, np.Name) }, func() error {
		return b.checkCounters(id.ID(), false)
	})
}

// pick returns the index of a pod on this node (local) or elsewhere, varying with i.
func (w *policyWorld) pick(local bool, i int) int {
	for n := range len(w.pods) {
		idx := (i*7919 + n) % len(w.pods)
		if (w.pods[idx].Node == w.localNode) == local && w.pods[idx].Namespace != "monitoring" {
			return idx
		}
	}
	return 0
}

// freshAddr is an address no pod has: from 10.200.0.0/16 up.
func (w *policyWorld) freshAddr() netip.Addr {
	n := w.nextPod
	return netip.AddrFrom4([4]byte{10, byte(200 + n>>16), byte(n >> 8), byte(n)})
}

// extraPolicy is a new policy for round i: an application opened to another team's web tier.
func (w *policyWorld) extraPolicy(i int) *networkingv1.NetworkPolicy {
	w.nextPolicy++
	ns := i % w.size.Namespaces
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: nsName(ns), Name: fmt.Sprintf("extra-%d", w.nextPolicy)},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: *matchLabels("app", appName(i%w.size.AppsPerNS)),
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: matchLabels("team", fmt.Sprintf("team-%d", (i+2)%5)),
					PodSelector: matchLabels("tier", "web")}},
				Ports: []networkingv1.NetworkPolicyPort{tcpPort(6000 + int32(i))}}},
		},
	}
}

// checkIdentity reads the identity the kernel maps addr to and compares it with the state's.
func (b *policyBench) checkIdentity(addr netip.Addr) error {
	ep, ok := b.last.Endpoints[addr]
	if !ok {
		return fmt.Errorf("%s is not in the state", addr)
	}
	out, err := b.ns.nftGetElementOutput("ids4", addr.String())
	if err != nil {
		return err
	}
	want := fmt.Sprintf("%s : 0x%08x", addr, ep.Identity) // nft prints marks in hex
	if !strings.Contains(out, want) {
		return fmt.Errorf("the kernel's identity map says %q, want %q", strings.TrimSpace(out), want)
	}
	return nil
}

// checkCounters reads the table's counters (nft list counters) and checks whether the
// counter of rule id is there.
func (b *policyBench) checkCounters(id string, want bool) error {
	var counters map[string]datapath.PolicyCounter
	if err := b.ns.do(func() (err error) {
		counters, err = b.r.PolicyCounters(b.ctx)
		return err
	}); err != nil {
		return err
	}
	if _, has := counters[id]; has != want {
		return fmt.Errorf("counter of %s in the kernel: %v, want %v", id, has, want)
	}
	return nil
}
