package nftsvc

import (
	"strings"
	"testing"

	"github.com/twill-net/twill/internal/datapath"
)

// TestSharedExternalIPServedOnce: two services naming the same external IP and port must
// not make the kernel refuse the table (which would leave every service unserved): the
// first by key serves it, the other is served without it, and takes it over when the first
// goes.
func TestSharedExternalIPServedOnce(t *testing.T) {
	k := newTwoKernels(t)
	svcs := manyServices(0, 3)
	shared := addrs("203.0.113.9")
	svcs[1].ExternalIPs, svcs[2].ExternalIPs = shared, shared
	k.apply(datapath.ServiceChanges{Full: true, Set: svcs})
	k.same("after a Full with a shared external IP")
	owner := svcs[1].Ports[0].Backends[0].Addr.String()
	other := svcs[2].Ports[0].Backends[0].Addr.String()
	table := list(t, k.viaNL, false)
	if !strings.Contains(table, "203.0.113.9 . tcp . 80 . 0 : "+owner) || strings.Contains(table, "203.0.113.9 . tcp . 80 . 0 : "+other) {
		t.Fatalf("the shared external IP must lead to the first service's endpoints (%s) only:\n%s", owner, table)
	}

	// The owner goes: the other service is rendered again and serves the address.
	k.apply(datapath.ServiceChanges{Removed: []datapath.ServiceKey{svcs[1].Key}})
	k.same("after the owner went")
	table = list(t, k.viaNL, false)
	if !strings.Contains(table, "203.0.113.9 . tcp . 80 . 0 : "+other) {
		t.Fatalf("the remaining service must take the shared external IP over:\n%s", table)
	}
	// And a newcomer naming it again is served without it, in an update.
	late := manyServices(7, 1)
	late[0].ExternalIPs = shared
	k.apply(datapath.ServiceChanges{Set: late})
	k.same("after a newcomer claimed it too")
	if st := k.nlRec.Stats(); st.Failures != 0 || st.Rebuilds != 1 {
		t.Errorf("stats %+v: nothing may be refused", st)
	}
}
