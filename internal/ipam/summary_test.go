package ipam

import (
	"net/netip"
	"strings"
	"testing"
)

func TestSummaryWrite(t *testing.T) {
	pools := append(DefaultPools(true), Pool{Name: "old", CIDR: netip.MustParsePrefix("192.168.0.0/24"), BlockSize: 28, Disabled: true})
	blocks := []Block{
		{CIDR: netip.MustParsePrefix("10.244.0.128/26"), Pool: "default-ipv4", Node: "node-a", Allocated: 64},
		{CIDR: netip.MustParsePrefix("10.244.0.64/26"), Pool: "default-ipv4", Node: "node-a", Allocated: 12},
		{CIDR: netip.MustParsePrefix("10.244.3.0/26"), Pool: "default-ipv4", Node: "node-b", Allocated: 0},
		{CIDR: netip.MustParsePrefix("fd00:10:244:0:1::/122"), Pool: "default-ipv6", Node: "node-b", Allocated: 3},
		{CIDR: netip.MustParsePrefix("192.168.0.16/28"), Pool: "old", Node: "node-c", Allocated: 5},
	}
	var out strings.Builder
	if err := Summarize(pools, blocks).Write(&out); err != nil {
		t.Fatal(err)
	}
	// IPv4 room: free in claimed enabled blocks 0+52+64 = 116, plus 1021 unclaimed /26 blocks
	// of 64 = 65344; the disabled pool's free addresses do not count.
	want := `POOL             CIDR               BLOCK SIZE   BLOCKS CLAIMED/TOTAL   ADDRESSES USED/FREE
default-ipv4     10.244.0.0/16      /26          3/1024                 76/65460
default-ipv6     fd00:10:244::/56   /122         1/~7.4e19              3/~4.7e21
old (disabled)   192.168.0.0/24     /28          1/16                   5/251

NODE     BLOCK                   POOL           ADDRESSES USED/TOTAL
node-a   10.244.0.64/26          default-ipv4   12/64
         10.244.0.128/26         default-ipv4   64/64
node-b   10.244.3.0/26           default-ipv4   0/64
         fd00:10:244:0:1::/122   default-ipv6   3/64
node-c   192.168.0.16/28         old            5/16

IPv4: room for 65460 more pods (116 free in claimed blocks, 1021 unclaimed blocks)
IPv6: room for ~4.7e21 more pods (61 free in claimed blocks, ~7.4e19 unclaimed blocks)
`
	if out.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", out.String(), want)
	}
}

func TestSummaryOfEmptyCluster(t *testing.T) {
	var out strings.Builder
	if err := Summarize(nil, nil).Write(&out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "No IP pools") {
		t.Errorf("got %q", out.String())
	}
}
