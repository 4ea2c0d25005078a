// Package nftdp is the nftables policy datapath: a datapath.PolicyReconciler that renders the
// policy calculator's PolicyState into one table owned by twill (inet "twill", see TableName)
// and keeps it up to date with small transactions. It decides every first packet exactly as
// datapath.PolicyEvaluator does, for the pods of its own node; the privileged tests compare
// the two with real packets.
//
// # What this node enforces
//
// A node enforces egress where a packet leaves one of its pods and ingress where a packet
// enters one; the other node enforces the other half. Its pods are the state's endpoints
// whose Node is the node name the reconciler was made with: the same field the evaluator's
// "own node" exception reads, so the two cannot disagree. (Passing a separate list of local
// addresses or host veths would be a second source of truth.) So the agent must add a new pod
// to the calculator, with its IPAM address and this node, and apply the state before it
// answers CNI ADD: until then the pod's address is not policed here.
//
// # Table layout
//
//	forward, input, output   base chains (filter priority, policy accept): pod traffic is
//	                         routed by the node; input and output carry pod<->node traffic.
//	                         ct state established,related accept; IPv6 neighbour discovery
//	                         accept; then per family: jump pods4 / pods6
//	pods4                    return unless saddr or daddr is in @local4; ct state invalid
//	                         drop (counted); saddr local: jump egress4; daddr local: jump ingress4
//	egress4, ingress4        ingress: from this node's own addresses (@node4) return;
//	                         ct mark := identity of the peer (@ids4 map, 0 if not a pod);
//	                         goto <dir>4-admin
//	<dir>4-admin             Admin tier, first match in priority order: Accept return,
//	                         Deny drop, Pass goto <dir>4-np; then goto <dir>4-np
//	<dir>4-np                NetworkPolicy tier: local pod not isolated: goto <dir>4-baseline;
//	                         the single-port and port-range lookups of peer identities;
//	                         goto <dir>4-np-rest
//	<dir>4-np-rest           the other verdict-map lookups (below); egress named-port rules;
//	                         default deny (counted per direction) drop
//	ports-<hash>             one per distinct list of port ranges of a peer identity: th dport
//	                         FIRST-LAST goto allow-<hash>, ...; goto <dir>4-np-rest
//	<dir>4-baseline          Baseline tier as Admin, Pass returns; the end returns (allowed)
//	allow-<hash>             one per NetworkPolicy rule: counter, return
//	(and the same for IPv6 with suffix 6)
//
// "return" from a tier leaves the direction allowing the packet (the tiers are chained with
// goto, so it returns to the pods chain), which then checks the other direction when both
// ends are local pods. Sets: local4 (this node's pods), node4 (this node's addresses), ids4
// (every pod address of the cluster -> identity), i-<set> (identities, matched against the
// ct mark), s4-<set> (this node's pods in an identity set: rule subjects and isolation),
// c4-<set> (CIDR intervals, excepts already carved out), n4-<port name> (address . protocol .
// port of every pod declaring the name).
//
// # Choices
//
// Lookups do not grow with pods: pods are set elements; rules name sets. Which nft rules exist
// depends on the policies only, so a pod (or node, or label) change is a transaction of set
// elements alone.
//
// The peer's identity is kept in the conntrack mark for the duration of the evaluation: twill
// owns the ct mark of pod connections (the packet mark is left alone, kube-proxy uses it). The
// local side is looked up by address, which avoids a second register.
//
// Admin and Baseline tiers are first-match lists: one nft rule per rule, peer and port group,
// in the state's order, so their cost grows with those tiers' rules. The NetworkPolicy tier
// has no order and is flattened into five verdict maps keyed by local address . peer identity
// . protocol . port (a hash map) or port range (an interval map), local address . peer
// identity, local address . peer address range . protocol . port range, and local address .
// peer address range, whose elements go to the allow chain of the earliest rule allowing
// them: five lookups whatever the number of rules.
// Overlapping ranges are cut into disjoint pieces (nft refuses overlaps). Named ports of
// ingress rules resolve per local pod while flattening; named ports of egress rules (the port
// depends on the destination pod) are one rule each, with a set of (local address . peer).
//
// Updates: the reconciler renders the whole table as a model, diffs it with the model last
// applied and sends the difference in one transaction: elements added and deleted, chains
// whose rules changed flushed and rewritten. Rendering keeps a cache from one apply to the
// next (render_cache.go): each local pod's flattened NetworkPolicy elements, reused unless
// the pod's identity, named ports or rules changed or a set its rules name gained or lost
// members, and the hashed names of every rule's objects; so a pod or policy change flattens
// only the pods it concerns. The sets that grow with the cluster (ids4, n4-*, the
// NetworkPolicy maps) are reused from the last render, or derived from it by the elements
// that changed, and the diff of a derived set looks at those alone (render_reuse.go). The
// first apply of a process (and any after a failure) reads nothing back: it adds, deletes
// and re-creates the table in one transaction, which the kernel applies atomically, so
// policy is never missing.
//
// Writing: the agent's reconciler (NewKernel) writes each transaction over netlink in its
// own process (google/nftables, nlwriter.go), one batch, reading nothing back. Every rule is
// built once in both nft syntax and kernel expressions (rules.go), as nft 1.0 compiles it;
// knftables writes the same plan for the golden tests (New), and TestNetlinkMatchesNft
// checks that the kernel holds the same table, rule bytecode and elements whichever wrote
// it. Going through the nft binary cost some 80 ms of CPU per transaction whatever its size,
// which alone was most of a change's time. The table, its chains and counters carry no
// comments (google/nftables cannot write them); each allow chain's rule carries its
// attribution ID as comment. Interval concatenations (pipapo) are kept to address ranges:
// the kernel's cost of changing one grows with the whole map, where hash maps and chains cost
// the same at any size.
//
// Replies and related packets of an allowed connection pass (conntrack). Connections that
// are established when a policy changes keep going: only first packets are judged. Cutting
// them is a choice the agent can make by deleting the pods' conntrack entries.
//
// Attribution: every rule verdict counts into a named counter r-<hash of Attribution.ID()>;
// default-deny-ingress/-egress, own-node and ct-invalid count the verdicts no rule makes.
// PolicyCounters reads them over netlink and reports them by ID. Drops are rendered by
// dropChain alone: a drop goes to a chain drop-<counter name> that counts it, drops it and logs it
// (rate-limited) to nflog group DropLogGroup with the counter name as prefix, so the agent's
// drop events (internal/flow) name the rule or default deny that dropped each packet;
// DropAttribution turns a prefix back into the counter's key.
package nftdp
