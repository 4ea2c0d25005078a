package routing

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/twill-net/twill/internal/datapath"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

var (
	ul = Underlay{Link: "eth0", Index: 2, MTU: 1500, Subnets: prefixes("172.31.250.0/24", "fd00:250::/64")}

	n1 = Node{Name: "n1", IPs: addrs("172.31.250.11", "fd00:250::11"), Blocks: prefixes("10.250.1.0/24", "fd10:0:0:1::/64")}
	n2 = Node{Name: "n2", IPs: addrs("172.31.250.12", "fd00:250::12"), Blocks: prefixes("10.250.2.0/24", "fd10:0:0:2::/64")}
	// n3 is on another subnet, reached through a router.
	n3 = Node{Name: "n3", IPs: addrs("172.31.251.13"), Blocks: prefixes("10.250.3.0/24", "fd10:0:0:3::/64")}
)

func golden(lines ...string) string { return strings.Join(lines, "\n") + "\n" }

func checkState(t *testing.T, got datapath.RouteState, want string) {
	t.Helper()
	if got.String() != want {
		t.Errorf("state:\n%s\nwant:\n%s", got, want)
	}
}

func TestComputeVXLANDualStackOverIPv4(t *testing.T) {
	got := Compute(n1, ul, []Node{n3, n2}, Config{Mode: ModeVXLAN})
	checkState(t, got, golden(
		"vxlan twill.vxlan id 1 dstport 8472 local 172.31.250.11 mtu 1450 address 02:74:ac:1f:fa:0b inet6 fe80::74:acff:fe1f:fa0b",
		"route blackhole 10.250.1.0/24",
		"route 10.250.2.0/24 via 172.31.250.12 dev twill.vxlan onlink",
		"route 10.250.3.0/24 via 172.31.251.13 dev twill.vxlan onlink",
		"route blackhole fd10:0:0:1::/64",
		"route fd10:0:0:2::/64 via fe80::74:acff:fe1f:fa0c dev twill.vxlan onlink",
		"route fd10:0:0:3::/64 via fe80::74:acff:fe1f:fb0d dev twill.vxlan onlink",
		"neigh 172.31.250.12 lladdr 02:74:ac:1f:fa:0c",
		"neigh 172.31.251.13 lladdr 02:74:ac:1f:fb:0d",
		"neigh fe80::74:acff:fe1f:fa0c lladdr 02:74:ac:1f:fa:0c",
		"neigh fe80::74:acff:fe1f:fb0d lladdr 02:74:ac:1f:fb:0d",
		"fdb 02:74:ac:1f:fa:0c dst 172.31.250.12",
		"fdb 02:74:ac:1f:fb:0d dst 172.31.251.13",
	))
}

func TestComputeVXLANOverIPv6OnlyUnderlay(t *testing.T) {
	local := Node{Name: "a", IPs: addrs("fd00:250::11"), Blocks: prefixes("10.250.1.0/24")}
	peer := Node{Name: "b", IPs: addrs("fd00:250::12"), Blocks: prefixes("10.250.2.0/24", "fd10:0:0:2::/64")}
	got := Compute(local, ul, []Node{peer}, Config{Mode: ModeVXLAN, VNI: 7, Port: 4789})
	if got.VXLAN == nil || got.VXLAN.MTU != 1430 || got.VXLAN.Local != local.IPs[0] || got.VXLAN.VNI != 7 || got.VXLAN.Port != 4789 {
		t.Fatalf("vxlan device = %+v, want local fd00:250::11, mtu 1430 (1500-70), id 7, port 4789", got.VXLAN)
	}
	mac := vtepMAC(peer.IPs[0])
	ll := linkLocal(mac)
	// Without an IPv4 node address the IPv4 block goes through the IPv6 link-local gateway.
	wantRoutes := []datapath.Route{
		{Dst: netip.MustParsePrefix("10.250.1.0/24"), Blackhole: true},
		{Dst: netip.MustParsePrefix("10.250.2.0/24"), Gateway: ll, Dev: datapath.VXLANDevice, OnLink: true},
		{Dst: netip.MustParsePrefix("fd10:0:0:2::/64"), Gateway: ll, Dev: datapath.VXLANDevice, OnLink: true},
	}
	if !slices.Equal(got.Routes, wantRoutes) {
		t.Errorf("routes = %v, want %v", got.Routes, wantRoutes)
	}
	if want := []datapath.Neighbor{{IP: ll, MAC: mac}}; !slices.Equal(got.Neighbors, want) {
		t.Errorf("neighbours = %v, want %v", got.Neighbors, want)
	}
	if want := []datapath.FDBEntry{{MAC: mac, Dst: peer.IPs[0]}}; !slices.Equal(got.FDB, want) {
		t.Errorf("fdb = %v, want %v", got.FDB, want)
	}
}

func TestComputeNative(t *testing.T) {
	got := Compute(n1, ul, []Node{n2, n3}, Config{Mode: ModeNative})
	// n3 is not on our subnet: native mode needs L2 adjacency, so its blocks are left out (a
	// route the kernel would refuse must not hold up the others) and NativeUnreachable names it.
	if got, want := NativeUnreachable(ul, []Node{n2, n3}, Config{Mode: ModeNative}), []string{"n3"}; !slices.Equal(got, want) {
		t.Errorf("NativeUnreachable = %v, want %v", got, want)
	}
	checkState(t, got, golden(
		"route blackhole 10.250.1.0/24",
		"route 10.250.2.0/24 via 172.31.250.12 dev eth0",
		"route blackhole fd10:0:0:1::/64",
		"route fd10:0:0:2::/64 via fd00:250::12 dev eth0",
	))
}

func TestComputeAuto(t *testing.T) {
	got := Compute(n1, ul, []Node{n2, n3}, Config{Mode: ModeAuto})
	checkState(t, got, golden(
		"vxlan twill.vxlan id 1 dstport 8472 local 172.31.250.11 mtu 1450 address 02:74:ac:1f:fa:0b inet6 fe80::74:acff:fe1f:fa0b",
		"route blackhole 10.250.1.0/24",
		"route 10.250.2.0/24 via 172.31.250.12 dev eth0",
		"route 10.250.3.0/24 via 172.31.251.13 dev twill.vxlan onlink",
		"route blackhole fd10:0:0:1::/64",
		"route fd10:0:0:2::/64 via fd00:250::12 dev eth0",
		"route fd10:0:0:3::/64 via fe80::74:acff:fe1f:fb0d dev twill.vxlan onlink",
		"neigh 172.31.251.13 lladdr 02:74:ac:1f:fb:0d",
		"neigh fe80::74:acff:fe1f:fb0d lladdr 02:74:ac:1f:fb:0d",
		"fdb 02:74:ac:1f:fb:0d dst 172.31.251.13",
	))
}

func TestComputeAutoMixedPeer(t *testing.T) {
	// A peer on our IPv4 subnet without an IPv6 node address: IPv4 natively, IPv6 tunnelled.
	peer := Node{Name: "p", IPs: addrs("172.31.250.20"), Blocks: prefixes("10.250.20.0/24", "fd10:0:0:20::/64")}
	got := Compute(n1, ul, []Node{peer}, Config{Mode: ModeAuto})
	if got.VXLAN == nil || len(got.FDB) != 1 {
		t.Fatalf("want the tunnel for the IPv6 block, got:\n%s", got)
	}
	for _, r := range got.Routes {
		if r.Dst.Addr().Is4() && !r.Blackhole && r.Dev != "eth0" {
			t.Errorf("IPv4 route %v should be native", r)
		}
		if r.Dst.Addr().Is6() && !r.Blackhole && r.Dev != datapath.VXLANDevice {
			t.Errorf("IPv6 route %v should go through the tunnel", r)
		}
	}
}

// n1's VXLAN device as the golden text shows it.
const n1Device = "vxlan twill.vxlan id 1 dstport 8472 local 172.31.250.11 mtu 1450 address 02:74:ac:1f:fa:0b inet6 fe80::74:acff:fe1f:fa0b"

// In the tunnelling modes the device exists even when no route of ours uses it, because peers
// may tunnel to us (a node without pods has no routes pointing at it, yet it sends to ours).
func TestComputeTunnelDeviceWithoutTunnelRoutes(t *testing.T) {
	checkState(t, Compute(n1, ul, nil, Config{Mode: ModeNative}),
		golden("route blackhole 10.250.1.0/24", "route blackhole fd10:0:0:1::/64"))
	for _, mode := range []Mode{ModeVXLAN, ModeAuto} {
		checkState(t, Compute(n1, ul, nil, Config{Mode: mode}),
			golden(n1Device, "route blackhole 10.250.1.0/24", "route blackhole fd10:0:0:1::/64"))
	}
	// A peer on our subnet in auto mode needs no FDB or neighbour entries.
	if got := Compute(n1, ul, []Node{n2}, Config{Mode: ModeAuto}); got.VXLAN == nil || len(got.FDB) != 0 || len(got.Neighbors) != 0 {
		t.Errorf("auto mode with only an adjacent peer: want the device and no tunnel entries, got\n%s", got)
	}
}

func TestComputeSkipsUnusablePeers(t *testing.T) {
	self := n1
	self.Blocks = prefixes("10.250.99.0/24") // the same name must never give routes
	noAddr := Node{Name: "x", Blocks: prefixes("10.250.50.0/24")}
	v6only := Node{Name: "y", IPs: addrs("fd00:250::30"), Blocks: prefixes("10.250.51.0/24")}
	got := Compute(n1, ul, []Node{self, noAddr, v6only}, Config{Mode: ModeVXLAN})
	// The tunnel runs over IPv4 (n1's first address): neither x nor y has an IPv4 endpoint.
	checkState(t, got, golden(n1Device, "route blackhole 10.250.1.0/24", "route blackhole fd10:0:0:1::/64"))
}

func TestComputeContestedBlock(t *testing.T) {
	// Two peers claim one block (a stale claim): the first by name wins, whatever the order;
	// and a peer never takes our own block.
	a := Node{Name: "a", IPs: addrs("172.31.250.21"), Blocks: prefixes("10.250.7.0/24", "10.250.1.0/24")}
	b := Node{Name: "b", IPs: addrs("172.31.250.22"), Blocks: prefixes("10.250.7.0/24")}
	for _, peers := range [][]Node{{a, b}, {b, a}} {
		checkState(t, Compute(n1, ul, peers, Config{Mode: ModeNative}), golden(
			"route blackhole 10.250.1.0/24",
			"route 10.250.7.0/24 via 172.31.250.21 dev eth0",
			"route blackhole fd10:0:0:1::/64",
		))
	}
}

// TestComputeOrderInvariance replays the same cluster as event sequences in many orders (peers
// arriving, leaving and coming back, blocks listed in any order) and wants one state at the end.
func TestComputeOrderInvariance(t *testing.T) {
	peers := []Node{n2, n3,
		{Name: "n4", IPs: addrs("172.31.250.14", "fd00:250::14"), Blocks: prefixes("10.250.4.0/24", "10.250.40.0/24", "fd10:0:0:4::/64")},
		{Name: "n5", IPs: addrs("172.31.252.15"), Blocks: prefixes("10.250.5.0/24")},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, mode := range Modes {
		want := Compute(n1, ul, peers, Config{Mode: mode})
		for range 50 {
			known := map[string]Node{}
			// Apply a random sequence: every peer added once at least, some removed and re-added.
			for _, i := range rng.Perm(len(peers)) {
				p := peers[i]
				p.Blocks = slices.Clone(p.Blocks)
				rng.Shuffle(len(p.Blocks), func(i, j int) { p.Blocks[i], p.Blocks[j] = p.Blocks[j], p.Blocks[i] })
				known[p.Name] = p
				if rng.IntN(3) == 0 {
					delete(known, p.Name)
					Compute(n1, ul, mapValues(known), Config{Mode: mode}) // intermediate state, discarded
					known[p.Name] = p
				}
			}
			got := Compute(n1, ul, mapValues(known), Config{Mode: mode})
			if !got.Equal(want) {
				t.Fatalf("mode %s: order changed the state:\n%s\nwant:\n%s", mode, got, want)
			}
		}
	}
}

func mapValues(m map[string]Node) []Node {
	var out []Node
	for _, n := range m { // map order is random: one more shuffle
		out = append(out, n)
	}
	return out
}

func TestComputeRemovingPeerDropsItsEntries(t *testing.T) {
	both := Compute(n1, ul, []Node{n2, n3}, Config{Mode: ModeVXLAN})
	one := Compute(n1, ul, []Node{n2}, Config{Mode: ModeVXLAN})
	if len(both.FDB) != 2 || len(one.FDB) != 1 || len(one.Neighbors) != 2 || len(one.Routes) != 4 {
		t.Fatalf("unexpected sizes; with n2 only:\n%s", one)
	}
	if strings.Contains(one.String(), "172.31.251.13") || strings.Contains(one.String(), "10.250.3.0") {
		t.Errorf("n3's entries survived its removal:\n%s", one)
	}
}

func TestComputeMTUOverride(t *testing.T) {
	got := Compute(n1, ul, []Node{n2}, Config{MTU: 1400})
	if got.VXLAN == nil || got.VXLAN.MTU != 1400 {
		t.Fatalf("vxlan = %+v, want MTU 1400 from the override", got.VXLAN)
	}
	got = Compute(n1, Underlay{Link: "eth0", MTU: 9000}, []Node{n2}, Config{})
	if got.VXLAN == nil || got.VXLAN.MTU != 8950 {
		t.Fatalf("vxlan = %+v, want MTU 8950 on a 9000 underlay", got.VXLAN)
	}
}
