package datapath

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
)

func sampleState() RouteState {
	mac := MAC{0x02, 0x74, 172, 31, 250, 12}
	return RouteState{
		VXLAN: &VXLANSpec{Name: VXLANDevice, VNI: 1, Port: 8472, Local: netip.MustParseAddr("172.31.250.11"), MTU: 1450,
			MAC: MAC{0x02, 0x74, 172, 31, 250, 11}},
		Routes: []Route{
			{Dst: netip.MustParsePrefix("10.250.1.0/24"), Blackhole: true},
			{Dst: netip.MustParsePrefix("10.250.2.0/24"), Gateway: netip.MustParseAddr("172.31.250.12"), Dev: VXLANDevice, OnLink: true},
			{Dst: netip.MustParsePrefix("10.250.3.0/24"), Gateway: netip.MustParseAddr("172.31.250.13"), Dev: "eth0"},
		},
		Neighbors: []Neighbor{{IP: netip.MustParseAddr("172.31.250.12"), MAC: mac}},
		FDB:       []FDBEntry{{MAC: mac, Dst: netip.MustParseAddr("172.31.250.12")}},
	}
}

func TestRouteStateEqual(t *testing.T) {
	a, b := sampleState(), sampleState()
	if !a.Equal(b) {
		t.Fatal("two equal states differ")
	}
	b.VXLAN.MTU = 1400 // a distinct pointer with a different value
	if a.Equal(b) {
		t.Error("states with different VXLAN MTU are equal")
	}
	c := sampleState()
	c.VXLAN = nil
	if a.Equal(c) || c.Equal(a) {
		t.Error("a state without VXLAN equals one with it")
	}
	d := sampleState()
	d.Routes = d.Routes[:2]
	if a.Equal(d) {
		t.Error("states with different routes are equal")
	}
	if !(RouteState{}).Equal(RouteState{Routes: []Route{}}) {
		t.Error("nil and empty route lists differ")
	}
}

func TestRouteStateString(t *testing.T) {
	want := "vxlan twill.vxlan id 1 dstport 8472 local 172.31.250.11 mtu 1450 address 02:74:ac:1f:fa:0b\n" +
		"route blackhole 10.250.1.0/24\n" +
		"route 10.250.2.0/24 via 172.31.250.12 dev twill.vxlan onlink\n" +
		"route 10.250.3.0/24 via 172.31.250.13 dev eth0\n" +
		"neigh 172.31.250.12 lladdr 02:74:ac:1f:fa:0c\n" +
		"fdb 02:74:ac:1f:fa:0c dst 172.31.250.12\n"
	if got := sampleState().String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestMACFrom(t *testing.T) {
	hw, _ := net.ParseMAC("02:74:ac:1f:fa:0b")
	m, ok := MACFrom(hw)
	if !ok || m.String() != "02:74:ac:1f:fa:0b" || m.HardwareAddr().String() != hw.String() {
		t.Errorf("MACFrom(%s) = %s, %v", hw, m, ok)
	}
	if _, ok := MACFrom(make(net.HardwareAddr, 8)); ok {
		t.Error("an 8-byte address converted")
	}
}

func TestFakeRoutesRecords(t *testing.T) {
	var f FakeRoutes
	if _, ok := f.Last(); ok {
		t.Fatal("Last before any apply")
	}
	s := sampleState()
	if err := f.ApplyRoutes(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	f.SetErr(boom)
	if err := f.ApplyRoutes(context.Background(), RouteState{}); !errors.Is(err, boom) {
		t.Errorf("apply error = %v, want the injected one", err)
	}
	if got := f.Applied(); len(got) != 2 || !got[0].Equal(s) {
		t.Errorf("applied = %v", got)
	}
	if last, _ := f.Last(); !last.Equal(RouteState{}) {
		t.Errorf("last = %v, want the empty state", last)
	}
}
