package nftsvc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"

	"github.com/twill-net/twill/internal/datapath"
)

// world is a fake table holding the golden services and n bulk ones.
func world(t *testing.T, n int) (*knftables.Fake, *Reconciler, []datapath.Service) {
	t.Helper()
	fake := knftables.NewFake(TableFamily, TableName)
	r := New(fake, nil)
	all := append(goldenServices(), manyServices(0, n)...)
	apply(t, r, datapath.ServiceChanges{Full: true, Set: all})
	return fake, r, all
}

func apply(t *testing.T, r *Reconciler, ch datapath.ServiceChanges) {
	t.Helper()
	if err := r.ApplyServices(context.Background(), ch); err != nil {
		t.Fatal(err)
	}
}

// fresh is the table a single Full apply of services renders.
func fresh(t *testing.T, services []datapath.Service) string {
	t.Helper()
	fake := knftables.NewFake(TableFamily, TableName)
	apply(t, New(fake, nil), datapath.ServiceChanges{Full: true, Set: services})
	return fake.Dump()
}

// lastOps returns the operations of the last transaction run, one per line.
func lastOps(fake *knftables.Fake) []string {
	fake.RLock()
	defer fake.RUnlock()
	return strings.Split(strings.TrimSpace(fake.LastTransaction.String()), "\n")
}

// onlyNames checks that every operation names one of the service's port objects or addresses
// (its endpoints' hairpin elements included), or rewrites the services chain when the
// flat path's sets in use change (a handful of rules, whatever the number of services).
func onlyNames(t *testing.T, ops []string, s datapath.Service) {
	t.Helper()
	marks := []string{" services", "cluster4-n", "cluster6-n", "external4-n", "external6-n", "nodeport4-n", "nodeport6-n"}
	for _, p := range s.Ports {
		marks = append(marks, portID(s.Key, p))
	}
	for _, a := range append(slices.Clone(s.ClusterIPs), s.ExternalIPs...) {
		marks = append(marks, " "+a.String()+" ")
	}
	for _, p := range s.Ports {
		if p.NodePort != 0 {
			marks = append(marks, fmt.Sprintf(" %d ", p.NodePort))
		}
		for _, b := range p.Backends {
			marks = append(marks, fmt.Sprintf("{ %s . %s }", b.Addr, b.Addr))
		}
	}
	for _, op := range ops {
		if !slices.ContainsFunc(marks, func(m string) bool { return strings.Contains(op, m) }) {
			t.Errorf("operation touches something else than %s: %s", s.Key, op)
		}
	}
}

func TestAddOneServiceTouchesOnlyIt(t *testing.T) {
	fake, r, all := world(t, 500)
	added := manyServices(10000, 1)[0]
	apply(t, r, datapath.ServiceChanges{Set: []datapath.Service{added}})
	ops := lastOps(fake)
	onlyNames(t, ops, added)
	// On the flat path: its frontend's membership, two endpoints, two hairpin elements; no
	// chain, no rule.
	if len(ops) != 5 || strings.Contains(strings.Join(ops, "\n"), "chain") || strings.Contains(strings.Join(ops, "\n"), "rule") {
		t.Errorf("adding one service with two endpoints took %d operations, want 5 elements:\n%s", len(ops), strings.Join(ops, "\n"))
	}
	sameTable(t, fake.Dump(), fresh(t, append(all, added)), "table after the addition differs from a fresh rendering")
	if st := r.Stats(); st.Rebuilds != 1 || st.Updates != 1 {
		t.Errorf("stats %+v, want one rebuild then one update", st)
	}
}

func TestRemoveServiceTouchesOnlyIt(t *testing.T) {
	fake, r, all := world(t, 100)
	gone := all[1] // prod/shop: NodePort, external IP, affinity
	apply(t, r, datapath.ServiceChanges{Removed: []datapath.ServiceKey{gone.Key}})
	onlyNames(t, lastOps(fake), gone)
	rest := slices.Delete(slices.Clone(all), 1, 2)
	sameTable(t, fake.Dump(), fresh(t, rest), "table after the removal differs from a fresh rendering")
	if strings.Contains(fake.Dump(), portID(gone.Key, gone.Ports[0])) || strings.Contains(fake.Dump(), "30443") {
		t.Error("objects of the removed service are left")
	}
}

func TestEndpointChangeTouchesOnlyItsService(t *testing.T) {
	fake, r, all := world(t, 100)
	web := all[0]
	web.Ports = slices.Clone(web.Ports)
	web.Ports[0].Backends = append(slices.Clone(web.Ports[0].Backends), backend("10.0.3.1", 8080, "n3"))
	apply(t, r, datapath.ServiceChanges{Set: []datapath.Service{web}})
	ops := lastOps(fake)
	onlyNames(t, ops, web)
	// The frontend moves from the 2-endpoint set to the 3-endpoint one, which is new (and
	// so is its rule); its endpoint comes.
	for _, want := range []string{"add set inet twill-services cluster4-n3",
		"delete element inet twill-services cluster4-n2 { 10.96.0.10 . tcp . 80 }",
		"add element inet twill-services cluster4-n3 { 10.96.0.10 . tcp . 80 }",
		"add element inet twill-services cluster-backends4 { 10.96.0.10 . tcp . 80 . 2 : 10.0.3.1 . 8080 }"} {
		if !slices.ContainsFunc(ops, func(op string) bool { return strings.HasPrefix(op, want) }) {
			t.Errorf("adding an endpoint lacks %q:\n%s", want, strings.Join(ops, "\n"))
		}
	}
	all[0] = web
	sameTable(t, fake.Dump(), fresh(t, all), "table after the change differs from a fresh rendering")

	// The last endpoint goes: the frontend rejects instead, and the endpoints go.
	withEndpoints := web
	withEndpoints.Ports = slices.Clone(web.Ports)
	for i := range web.Ports {
		web.Ports[i].Backends, web.Ports[i].LocalBackends = nil, nil
	}
	apply(t, r, datapath.ServiceChanges{Set: []datapath.Service{web}})
	onlyNames(t, lastOps(fake), withEndpoints)
	all[0] = web
	dump := fake.Dump()
	sameTable(t, dump, fresh(t, all), "table after the endpoints went differs from a fresh rendering")
	if !strings.Contains(dump, "no-endpoints4 { 10.96.0.10 . tcp . 80 }") || strings.Contains(dump, "10.96.0.10 . tcp . 80 . ") {
		t.Errorf("a service without endpoints must reject, not keep its endpoints:\n%s", dump)
	}
}

func TestUnchangedServiceSendsNothing(t *testing.T) {
	_, r, all := world(t, 10)
	apply(t, r, datapath.ServiceChanges{Set: all[:3]})
	if st := r.Stats(); st.Unchanged != 1 || st.Updates != 0 {
		t.Errorf("stats %+v, want one unchanged apply", st)
	}
}

func TestFullAfterPartialsRebuilds(t *testing.T) {
	fake, r, all := world(t, 50)
	apply(t, r, datapath.ServiceChanges{Set: manyServices(100, 3)})
	apply(t, r, datapath.ServiceChanges{Removed: []datapath.ServiceKey{all[0].Key, all[10].Key}})
	want := append(slices.Clone(all[5:]), manyServices(200, 2)...)
	apply(t, r, datapath.ServiceChanges{Full: true, Set: want})
	ops := lastOps(fake)
	if ops[0] != "add table inet twill-services" || !strings.HasPrefix(ops[1], "delete table") {
		t.Errorf("a Full apply must delete and re-create the table in its transaction; it begins:\n%s\n%s", ops[0], ops[1])
	}
	sameTable(t, fake.Dump(), fresh(t, want), "table after Full differs from a fresh rendering")
	if st := r.Stats(); st.Rebuilds != 2 || st.Updates != 2 {
		t.Errorf("stats %+v, want 2 rebuilds and 2 updates", st)
	}
}

// refusing fails the transactions it is told to, as the kernel does when the table was edited.
type refusing struct {
	*knftables.Fake
	refuse int
}

func (f *refusing) Run(ctx context.Context, tx *knftables.Transaction) error {
	if f.refuse > 0 {
		f.refuse--
		return errors.New("refused")
	}
	return f.Fake.Run(ctx, tx)
}

func TestRefusedUpdateRebuilds(t *testing.T) {
	nft := &refusing{Fake: knftables.NewFake(TableFamily, TableName)}
	r := New(nft, nil)
	all := goldenServices()
	apply(t, r, datapath.ServiceChanges{Full: true, Set: all})
	nft.refuse = 2 // the update and the rebuild after it
	added := manyServices(0, 1)
	if err := r.ApplyServices(context.Background(), datapath.ServiceChanges{Set: added}); err == nil {
		t.Fatal("apply succeeded though every transaction was refused")
	}
	// The next change, whatever it is, brings the whole table back.
	more := manyServices(1, 1)
	apply(t, r, datapath.ServiceChanges{Set: more})
	sameTable(t, nft.Dump(), fresh(t, append(append(all, added...), more...)), "table after recovery differs from a fresh rendering")
}

func TestDualStackRendersBothFamilies(t *testing.T) {
	fake, _, _ := world(t, 0)
	dump := fake.Dump()
	for _, want := range []string{
		"cluster6-n1 { fd00:96::30 . tcp . 8443 }", // internalTrafficPolicy Local: one of two
		"cluster-backends6 { fd00:96::30 . tcp . 8443 . 0 : fd00:1::3 . 443 }",
		"nodeport6-n2 { tcp . 31443 }",
		"dnat ip6 to ip6 daddr . meta l4proto . th dport . numgen random mod 1 map @cluster-backends6",
	} {
		if !strings.Contains(dump, want) {
			t.Errorf("dual-stack table lacks %q", want)
		}
	}
}

// sameTable compares two dumps line by line, in any order (the fake lists elements in the
// order they were added), and reports the lines only one of them has.
func sameTable(t *testing.T, got, want, msg string) {
	t.Helper()
	count := map[string]int{}
	for _, l := range strings.Split(got, "\n") {
		count[l]++
	}
	for _, l := range strings.Split(want, "\n") {
		count[l]--
	}
	var diff []string
	for l, n := range count {
		switch {
		case n > 0:
			diff = append(diff, "+ "+l)
		case n < 0:
			diff = append(diff, "- "+l)
		}
	}
	if len(diff) > 0 {
		slices.Sort(diff)
		t.Errorf("%s (+ only in the table, - only in the fresh rendering):\n%s", msg, strings.Join(diff, "\n"))
	}
}
