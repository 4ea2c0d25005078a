package nftdp

// Drop logging: every packet the table drops is also sent to nflog (rate-limited), so the
// agent can publish drop events attributed to the rule that dropped it (see dropChain).
const (
	// DropLogGroup is the nflog group of twill's drop log; the agent's drop event receiver
	// binds it in the node's network namespace. ("tw" in ASCII: a number no other nflog user
	// is likely to pick.)
	DropLogGroup uint16 = 0x7477
	// DropLogRate and DropLogBurst bound the packets one drop counter logs: per second, and
	// at once after a quiet spell.
	DropLogRate  = 100
	DropLogBurst = 200
	// DropLogPrefixMax is the longest prefix the kernel keeps for an nft log statement
	// (NF_LOG_PREFIXLEN is 128 bytes with the terminating NUL). Prefixes are counter names,
	// 20 bytes at most.
	DropLogPrefixMax = 127
	// dropLogSnaplen is how much of a dropped packet is copied to the log: the IPv6 header
	// and a few extension headers before the ports.
	dropLogSnaplen = 128
)

// dropChain is the chain that counts, logs and drops the packets of one drop counter.
func dropChain(counter string) string { return "drop-" + counter }

// DropLogPrefix is the nflog prefix of the drops counted by the named counter: the name itself,
// unique in the table and short (r-<12 hex digits>, default-deny-<direction>, ct-invalid).
func DropLogPrefix(counter string) string { return counter }

// DropAttribution returns the key under which PolicyCounters reports the counter named by an
// nflog prefix of the table's drop log (an Attribution ID, datapath.DefaultDenyCounter or
// datapath.CounterInvalid); ok is false for a prefix the table in force does not hold.
func (r *Reconciler) DropAttribution(prefix string) (key string, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.applied == nil {
		return "", false
	}
	key, ok = r.applied.counters[prefix]
	return key, ok
}
