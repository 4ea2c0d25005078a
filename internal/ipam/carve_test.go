package ipam

import (
	"net/netip"
	"strings"
	"testing"
)

func mustPool(t *testing.T, name, cidr string, blockSize int) Pool {
	t.Helper()
	p := Pool{Name: name, CIDR: netip.MustParsePrefix(cidr), BlockSize: blockSize}.WithDefaults()
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCapacityMath(t *testing.T) {
	pools := DefaultPools(true)
	v4, v6 := pools[0], pools[1]
	if v4.Name != "default-ipv4" || v4.CIDR.String() != "10.244.0.0/16" || v4.BlockSize != 26 {
		t.Fatalf("default IPv4 pool = %+v", v4)
	}
	if v6.Name != "default-ipv6" || v6.CIDR.String() != "fd00:10:244::/56" || v6.BlockSize != 122 {
		t.Fatalf("default IPv6 pool = %+v", v6)
	}
	if len(DefaultPools(false)) != 1 {
		t.Fatal("DefaultPools(false) should give the IPv4 pool only")
	}
	for _, c := range []struct {
		pool              Pool
		perBlock          int
		blocks, addresses string
	}{
		{v4, 64, "1024", "65536"},
		{v6, 64, "73786976294838206464", "4722366482869645213696"}, // 2^66 blocks, 2^72 addresses
		{mustPool(t, "small", "192.168.7.0/24", 28), 16, "16", "256"},
		{mustPool(t, "one", "192.168.7.0/24", 24), 256, "1", "256"},
		{mustPool(t, "host", "192.168.7.0/30", 32), 1, "4", "4"},
	} {
		if got := c.pool.BlockAddresses(); got != c.perBlock {
			t.Errorf("%s: %d addresses per block, want %d", c.pool.Name, got, c.perBlock)
		}
		if got := c.pool.BlockCount().String(); got != c.blocks {
			t.Errorf("%s: %s blocks, want %s", c.pool.Name, got, c.blocks)
		}
		if got := c.pool.AddressCount().String(); got != c.addresses {
			t.Errorf("%s: %s addresses, want %s", c.pool.Name, got, c.addresses)
		}
	}
	if got := (Block{CIDR: netip.MustParsePrefix("10.0.0.64/26")}).Capacity(); got != 64 {
		t.Errorf("a /26 block holds %d addresses, want 64 (every address is usable)", got)
	}
}

func TestPoolValidation(t *testing.T) {
	for _, c := range []struct {
		pool Pool
		want string // part of the error; "" for valid
	}{
		{Pool{Name: "a", CIDR: netip.MustParsePrefix("10.0.0.0/16")}, ""},
		{Pool{Name: "a", CIDR: netip.MustParsePrefix("fd00::/48")}, ""},
		{Pool{Name: "", CIDR: netip.MustParsePrefix("10.0.0.0/16")}, "no name"},
		{Pool{Name: "a"}, "no valid CIDR"},
		{Pool{Name: "a", CIDR: netip.MustParsePrefix("10.0.0.1/16")}, "did you mean 10.0.0.0/16"},
		{Pool{Name: "a", CIDR: netip.MustParsePrefix("10.0.0.0/16"), BlockSize: 8}, "between the pool's /16 and /32"},
		{Pool{Name: "a", CIDR: netip.MustParsePrefix("10.0.0.0/16"), BlockSize: 33}, "between the pool's /16 and /32"},
		{Pool{Name: "a", CIDR: netip.MustParsePrefix("fd00::/48"), BlockSize: 129}, "and /128"},
		{Pool{Name: "a", CIDR: netip.MustParsePrefix("fd00::/48"), BlockSize: 64}, "too big"},
		{Pool{Name: "a", CIDR: netip.MustParsePrefix("::ffff:10.0.0.0/112")}, "IPv4-mapped"},
	} {
		err := c.pool.WithDefaults().Validate()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%+v: unexpected error %v", c.pool, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%+v: error %v, want one saying %q", c.pool, err, c.want)
		}
	}
}

func TestNextFreeBlockStartsAtNodeOffsetAndWraps(t *testing.T) {
	pool := mustPool(t, "p", "10.0.0.0/24", 28) // 16 blocks
	first, ok := NextFreeBlock(pool, nil, "node-a")
	if !ok || !pool.Contains(first) || first.Bits() != 28 {
		t.Fatalf("first block %v %v", first, ok)
	}
	again, _ := NextFreeBlock(pool, nil, "node-a")
	if again != first {
		t.Fatalf("the offset must be a function of the node name: %v then %v", first, again)
	}
	// Different nodes start in different places (for these names), so they rarely race.
	starts := map[netip.Prefix]bool{}
	for _, n := range []string{"node-a", "node-b", "node-c", "node-d"} {
		b, _ := NextFreeBlock(pool, nil, n)
		starts[b] = true
	}
	if len(starts) < 3 {
		t.Errorf("four nodes start at only %d distinct blocks", len(starts))
	}

	// Claim everything one by one for one node: each block comes exactly once, wrapping round.
	var taken []Block
	seen := map[netip.Prefix]bool{}
	for i := range 16 {
		b, ok := NextFreeBlock(pool, taken, "node-a")
		if !ok {
			t.Fatalf("pool full after %d blocks, want 16", i)
		}
		if seen[b] {
			t.Fatalf("block %v given twice", b)
		}
		if i > 0 && b == first {
			t.Fatalf("block %v given again", b)
		}
		seen[b] = true
		taken = append(taken, Block{CIDR: b, Pool: "p", Node: "node-a"})
	}
	if b, ok := NextFreeBlock(pool, taken, "node-b"); ok {
		t.Fatalf("full pool gave %v", b)
	}
	// Free a block below the offset: found by wrapping.
	lowest := netip.MustParsePrefix("10.0.0.0/28")
	var rest []Block
	for _, b := range taken {
		if b.CIDR != lowest {
			rest = append(rest, b)
		}
	}
	if b, ok := NextFreeBlock(pool, rest, "node-a"); !ok || b != lowest {
		t.Fatalf("after freeing %v got %v %v", lowest, b, ok)
	}
}

func TestNextFreeBlockRespectsOverlappingBlocks(t *testing.T) {
	pool := mustPool(t, "p", "10.0.0.0/24", 28)
	// A /25 of another pool covers 8 blocks, a /30 covers one; together with 7 of ours the
	// pool has exactly one block left.
	existing := []Block{
		{CIDR: netip.MustParsePrefix("10.0.0.0/25"), Pool: "other"},
		{CIDR: netip.MustParsePrefix("10.0.0.132/30"), Pool: "other"}, // inside 10.0.0.128/28
		{CIDR: netip.MustParsePrefix("192.168.0.0/16"), Pool: "elsewhere"},
	}
	for i := 2; i < 8; i++ {
		existing = append(existing, Block{CIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(128 + 16*i)}), 28)})
	}
	b, ok := NextFreeBlock(pool, existing, "any")
	if want := netip.MustParsePrefix("10.0.0.144/28"); !ok || b != want {
		t.Fatalf("got %v %v, want %v", b, ok, want)
	}
	existing = append(existing, Block{CIDR: b})
	if b, ok := NextFreeBlock(pool, existing, "any"); ok {
		t.Fatalf("pool should be full, got %v", b)
	}
	if _, ok := NextFreeBlock(pool, []Block{{CIDR: netip.MustParsePrefix("10.0.0.0/8")}}, "any"); ok {
		t.Fatal("a block covering the whole pool leaves nothing free")
	}
}

func TestNextFreeBlockIPv6(t *testing.T) {
	pool := DefaultPools(true)[1]
	b, ok := NextFreeBlock(pool, nil, "node-a")
	if !ok || !pool.Contains(b) || b.Bits() != 122 || b != b.Masked() {
		t.Fatalf("got %v %v", b, ok)
	}
	b2, ok := NextFreeBlock(pool, []Block{{CIDR: b}}, "node-a")
	if !ok || b2 == b || !pool.Contains(b2) {
		t.Fatalf("second block %v %v (first %v)", b2, ok, b)
	}
}
