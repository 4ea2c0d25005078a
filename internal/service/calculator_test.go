package service

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/twill-net/twill/internal/datapath"
)

func setKeys(ch datapath.ServiceChanges) []datapath.ServiceKey {
	var ks []datapath.ServiceKey
	for _, s := range ch.Set {
		ks = append(ks, s.Key)
	}
	return ks
}

func TestFirstFlushIsFullThenOnlyChanges(t *testing.T) {
	c := NewCalculator(thisNode)
	if !c.Pending() {
		t.Error("a new calculator has nothing pending; its first (Full) flush would be skipped")
	}
	feed(c, clusterIPService("a", []string{"10.96.0.1"}), clusterIPService("b", []string{"10.96.0.2"}),
		slice("a-1", "a", v4, nil, readyEP("10.244.1.3", "n1")))
	ch := c.Flush()
	if !ch.Full || !slices.Equal(setKeys(ch), []datapath.ServiceKey{key("a"), key("b")}) || len(ch.Removed) != 0 {
		t.Fatalf("first flush = %+v, want Full with a and b", ch)
	}
	if c.Pending() {
		t.Error("pending right after a flush")
	}
	if ch := c.Flush(); ch.Full || len(ch.Set)+len(ch.Removed) != 0 {
		t.Errorf("flush with no event = %+v, want empty", ch)
	}

	// A new endpoint for a: only a.
	c.UpsertEndpointSlice(slice("a-1", "a", v4, nil, readyEP("10.244.1.3", "n1"), readyEP("10.244.2.3", "n2")))
	ch = c.Flush()
	if ch.Full || !slices.Equal(setKeys(ch), []datapath.ServiceKey{key("a")}) || len(ch.Removed) != 0 {
		t.Fatalf("after a's slice changed: %+v, want Set [a]", ch)
	}
	if got := ch.Set[0].Ports[0].Backends; len(got) != 2 {
		t.Errorf("a's backends = %v, want 2", got)
	}

	// An update that changes nothing the datapath sees (a label, a target port the slice
	// already resolves) hands out nothing.
	a := clusterIPService("a", []string{"10.96.0.1"})
	a.Labels = map[string]string{"app": "a"}
	c.UpsertService(a)
	if ch := c.Flush(); len(ch.Set)+len(ch.Removed) != 0 || ch.Full {
		t.Errorf("a no-op update gave %+v", ch)
	}

	// b goes.
	c.DeleteService("ns", "b")
	ch = c.Flush()
	if ch.Full || len(ch.Set) != 0 || !slices.Equal(ch.Removed, []datapath.ServiceKey{key("b")}) {
		t.Fatalf("after deleting b: %+v, want Removed [b]", ch)
	}
	// Deleting what is not served removes nothing.
	c.DeleteService("ns", "b")
	c.DeleteService("ns", "never")
	if ch := c.Flush(); len(ch.Set)+len(ch.Removed) != 0 {
		t.Errorf("deleting unknown services gave %+v", ch)
	}

	// a turns headless: it is no longer served.
	h := clusterIPService("a", []string{"None"})
	c.UpsertService(h)
	ch = c.Flush()
	if !slices.Equal(ch.Removed, []datapath.ServiceKey{key("a")}) || len(ch.Set) != 0 {
		t.Fatalf("after a turned headless: %+v, want Removed [a]", ch)
	}

	// On request, the next flush is Full with everything served.
	c.UpsertService(clusterIPService("c", []string{"10.96.0.3"}))
	c.RequestFull()
	ch = c.Flush()
	if !ch.Full || !slices.Equal(setKeys(ch), []datapath.ServiceKey{key("c")}) || len(ch.Removed) != 0 {
		t.Fatalf("requested full flush = %+v, want Full with c alone", ch)
	}
	if got := c.Services(); len(got) != 1 || got[0].Key != key("c") {
		t.Errorf("Services() = %+v, want c", got)
	}
}

// TestUnrelatedChangeLeavesOthersOut: among many services, changing one hands out that one only.
func TestUnrelatedChangeLeavesOthersOut(t *testing.T) {
	c := NewCalculator(thisNode)
	names := []string{"a", "b", "c", "d", "e"}
	for i, n := range names {
		c.UpsertService(clusterIPService(n, []string{"10.96.0." + string(rune('1'+i))}))
		c.UpsertEndpointSlice(slice(n+"-1", n, v4, nil, readyEP("10.244.1."+string(rune('1'+i)), "n1")))
	}
	c.Flush()

	c.UpsertEndpointSlice(slice("c-1", "c", v4, nil, notReadyEP("10.244.1.3", "n1")))
	c.UpsertEndpointSlice(slice("c-2", "c", v4, nil, readyEP("10.244.2.3", "n2")))
	if ch := c.Flush(); !slices.Equal(setKeys(ch), []datapath.ServiceKey{key("c")}) || len(ch.Removed) != 0 || ch.Full {
		t.Errorf("after c's endpoints changed: %+v, want Set [c]", ch)
	}
	d := clusterIPService("d", []string{"10.96.0.4"})
	d.Spec.Type = corev1.ServiceTypeNodePort
	d.Spec.Ports[0].NodePort = 30004
	c.UpsertService(d)
	if ch := c.Flush(); !slices.Equal(setKeys(ch), []datapath.ServiceKey{key("d")}) || len(ch.Removed) != 0 {
		t.Errorf("after d became a NodePort: %+v, want Set [d]", ch)
	}
	c.DeleteEndpointSlice("ns", "e-1")
	ch := c.Flush()
	if !slices.Equal(setKeys(ch), []datapath.ServiceKey{key("e")}) || len(ch.Removed) != 0 {
		t.Errorf("after e's slice went: %+v, want Set [e]", ch)
	}
	if len(ch.Set) == 1 && len(ch.Set[0].Ports[0].Backends) != 0 {
		t.Errorf("e without slices still has backends: %v", ch.Set[0].Ports[0].Backends)
	}
}

func TestSliceBeforeServiceAndSliceMovingBetweenServices(t *testing.T) {
	c := NewCalculator(thisNode)
	c.UpsertEndpointSlice(slice("x-1", "a", v4, nil, readyEP("10.244.1.3", "n1")))
	c.Flush()
	c.UpsertService(clusterIPService("a", []string{"10.96.0.1"}))
	c.UpsertService(clusterIPService("b", []string{"10.96.0.2"}))
	ch := c.Flush()
	if len(ch.Set) != 2 || len(ch.Set[0].Ports[0].Backends) != 1 {
		t.Fatalf("a slice seen before its service: %+v, want a with one backend", ch)
	}
	// The slice's label now names b: a loses the backend, b gains it.
	c.UpsertEndpointSlice(slice("x-1", "b", v4, nil, readyEP("10.244.1.3", "n1")))
	ch = c.Flush()
	if !slices.Equal(setKeys(ch), []datapath.ServiceKey{key("a"), key("b")}) {
		t.Fatalf("after the slice moved: %+v, want Set [a b]", ch)
	}
	if len(ch.Set[0].Ports[0].Backends) != 0 || len(ch.Set[1].Ports[0].Backends) != 1 {
		t.Errorf("after the slice moved: a %v, b %v", ch.Set[0].Ports[0].Backends, ch.Set[1].Ports[0].Backends)
	}
	// Losing the label entirely: it belongs to no service any more.
	c.UpsertEndpointSlice(slice("x-1", "", v4, nil, readyEP("10.244.1.3", "n1")))
	ch = c.Flush()
	if !slices.Equal(setKeys(ch), []datapath.ServiceKey{key("b")}) || len(ch.Set[0].Ports[0].Backends) != 0 {
		t.Errorf("after the slice lost its label: %+v", ch)
	}
}
