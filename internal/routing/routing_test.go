package routing

import (
	"net"
	"net/netip"
	"strings"
	"testing"
)

func TestPodMTU(t *testing.T) {
	cases := []struct {
		underlay  int
		mode      Mode
		outerIPv6 bool
		override  int
		want      int
	}{
		{1500, ModeVXLAN, false, 0, 1450},
		{1500, ModeVXLAN, true, 0, 1430},
		{1500, ModeNative, false, 0, 1500},
		{1500, ModeNative, true, 0, 1500},
		{1500, ModeAuto, false, 0, 1450},
		{1500, ModeAuto, true, 0, 1430},
		{9000, ModeVXLAN, false, 0, 8950},
		{9000, ModeNative, false, 0, 9000},
		{1500, ModeVXLAN, false, 1300, 1300},
		{1500, ModeNative, false, 1400, 1400},
		{0, ModeVXLAN, false, 0, 1450}, // unknown underlay MTU: assume Ethernet's 1500
		{1500, "", false, 0, 1450},     // unset mode is the default, vxlan
	}
	for _, c := range cases {
		if got := PodMTU(c.underlay, c.mode, c.outerIPv6, c.override); got != c.want {
			t.Errorf("PodMTU(%d, %q, v6=%v, override %d) = %d, want %d", c.underlay, c.mode, c.outerIPv6, c.override, got, c.want)
		}
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"vxlan": ModeVXLAN, " Native ": ModeNative, "AUTO": ModeAuto} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "host-gw", "vxlan2"} {
		_, err := ParseMode(bad)
		if err == nil || !strings.Contains(err.Error(), "vxlan, native, auto") {
			t.Errorf("ParseMode(%q) error = %v, want one naming the valid modes", bad, err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	good := []Config{{}, {Mode: ModeAuto, VNI: 16777215, Port: 4789, MTU: 1400}}
	for _, c := range good {
		if err := c.Validate(); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
	bad := []Config{{Mode: "gre"}, {VNI: 1 << 24}, {VNI: -1}, {Port: 70000}, {MTU: 20}}
	for _, c := range bad {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}

func TestVTEPMAC(t *testing.T) {
	ips := addrs("172.31.250.11", "172.31.250.12", "10.0.0.1", "fd00::1", "fd00::2", "2001:db8::1")
	seen := map[string]netip.Addr{}
	for _, ip := range ips {
		mac := VTEPMAC(ip)
		if len(mac) != 6 || mac[0]&0x02 == 0 || mac[0]&0x01 != 0 {
			t.Errorf("VTEPMAC(%s) = %s: want a locally administered unicast MAC", ip, mac)
		}
		if again := VTEPMAC(ip); again.String() != mac.String() {
			t.Errorf("VTEPMAC(%s) not deterministic: %s then %s", ip, mac, again)
		}
		if other, dup := seen[mac.String()]; dup {
			t.Errorf("VTEPMAC(%s) = VTEPMAC(%s) = %s", ip, other, mac)
		}
		seen[mac.String()] = ip
	}
	if got := VTEPMAC(netip.MustParseAddr("172.31.250.11")).String(); got != "02:74:ac:1f:fa:0b" {
		t.Errorf("IPv4 VTEP MAC = %s, want the address inside: 02:74:ac:1f:fa:0b", got)
	}
	if got, want := VTEPMAC(netip.MustParseAddr("::ffff:172.31.250.11")), VTEPMAC(netip.MustParseAddr("172.31.250.11")); got.String() != want.String() {
		t.Errorf("a v4-mapped address gave %s, want %s", got, want)
	}
}

func TestVTEPLinkLocal(t *testing.T) {
	// The kernel's EUI-64 address for 52:54:00:12:34:56 is fe80::5054:ff:fe12:3456.
	mac, _ := net.ParseMAC("52:54:00:12:34:56")
	if got := VTEPLinkLocal(mac); got != netip.MustParseAddr("fe80::5054:ff:fe12:3456") {
		t.Errorf("VTEPLinkLocal(%s) = %s", mac, got)
	}
	if got := VTEPLinkLocal(net.HardwareAddr{1, 2}); got.IsValid() {
		t.Errorf("a 2-byte MAC gave %s", got)
	}
}
