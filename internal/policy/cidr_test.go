package policy

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func prefixes(s string) []netip.Prefix {
	var out []netip.Prefix
	for _, f := range strings.Fields(s) {
		out = append(out, netip.MustParsePrefix(f))
	}
	return out
}

func TestSubtractPrefixes(t *testing.T) {
	tests := []struct{ base, except, want string }{
		{"10.0.0.0/8", "", "10.0.0.0/8"},
		{"10.0.0.0/8", "10.0.0.0/8", ""},
		{"10.0.0.0/16", "10.0.0.0/8", ""},
		{"10.0.0.0/8", "192.168.0.0/16 fd00::/8", "10.0.0.0/8"},
		{"10.0.0.0/30", "10.0.0.1/32", "10.0.0.0/32 10.0.0.2/31"},
		{"10.0.0.0/24", "10.0.0.128/25 10.0.0.0/26", "10.0.0.64/26"},
		{"fd00::/126", "fd00::3/128", "fd00::/127 fd00::2/128"},
		{"10.0.0.7/24", "", "10.0.0.0/24"},
	}
	for _, tt := range tests {
		got := normalizePrefixes(subtractPrefixes(netip.MustParsePrefix(tt.base), prefixes(tt.except)))
		if !slices.Equal(got, prefixes(tt.want)) {
			t.Errorf("%s except %q = %v, want %v", tt.base, tt.except, got, tt.want)
		}
	}
}

func TestNormalizePrefixesDropsContained(t *testing.T) {
	got := normalizePrefixes(prefixes("10.1.0.0/16 10.0.0.0/8 192.0.2.0/24 10.0.0.0/8 192.0.2.5/32"))
	if want := prefixes("10.0.0.0/8 192.0.2.0/24"); !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}
