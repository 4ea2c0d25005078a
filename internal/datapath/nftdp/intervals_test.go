package nftdp

import (
	"net/netip"
	"strings"
	"testing"
)

func TestPartitionGivesEachValueItsEarliestRule(t *testing.T) {
	got := partition([]span{portSpan(80, 90, 1), portSpan(85, 100, 0), portSpan(200, 200, 2), portSpan(101, 120, 0)})
	var parts []string
	for _, s := range got {
		parts = append(parts, formatPorts(s)+"@"+string(rune('0'+s.rank)))
	}
	// 80-84 only rule 1 has; 85-120 rule 0 (85-100 and 101-120 joined); 200 rule 2.
	if want := "80-84@1 85-120@0 200@2"; strings.Join(parts, " ") != want {
		t.Errorf("partition = %s, want %s", strings.Join(parts, " "), want)
	}
}

func TestPartition2CutsOverlappingRectangles(t *testing.T) {
	p := func(s string) span { return prefixSpan(netip.MustParsePrefix(s), 0) }
	got := partition2([]rect{
		{addr: p("10.0.0.0/8"), port: portSpan(80, 80, 0)},
		{addr: p("10.1.0.0/16"), port: portSpan(1, 65535, 1)},
	})
	var parts []string
	for _, r := range got {
		parts = append(parts, formatAddrs(r.addr, ipv4)+":"+formatPorts(r.port)+"@"+string(rune('0'+r.port.rank)))
	}
	want := "10.0.0.0/16:80@0 10.1.0.0/16:1-79@1 10.1.0.0/16:80@0 10.1.0.0/16:81-65535@1 10.2.0.0-10.255.255.255:80@0"
	if strings.Join(parts, " ") != want {
		t.Errorf("partition2 = %s\nwant          %s", strings.Join(parts, " "), want)
	}
}

func TestFormatAddrs(t *testing.T) {
	for _, tc := range []struct {
		lo, hi string
		want   string
	}{
		{"10.0.0.1", "10.0.0.1", "10.0.0.1"},
		{"10.0.0.0", "10.0.0.255", "10.0.0.0/24"},
		{"0.0.0.0", "255.255.255.255", "0.0.0.0/0"},
		{"10.0.0.1", "10.0.0.2", "10.0.0.1-10.0.0.2"},
		{"::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::/0"},
		{"2001:db8::", "2001:db8::ff", "2001:db8::/120"},
	} {
		lo, hi := netip.MustParseAddr(tc.lo), netip.MustParseAddr(tc.hi)
		if got := formatAddrs(span{lo: addrU128(lo), hi: addrU128(hi)}, familyOf(lo)); got != tc.want {
			t.Errorf("formatAddrs(%s-%s) = %s, want %s", tc.lo, tc.hi, got, tc.want)
		}
	}
}
