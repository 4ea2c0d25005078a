// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// twill's fast path for established connections: a tcx ingress program on each pod's host-side
// veth, on the node's underlay interface and on twill's VXLAN device. A forwarded TCP or UDP
// packet of a connection that netfilter has already seen open and accepted (conntrack entry
// confirmed and assured, no NAT) skips the node's netfilter hooks and routing code: the program
// looks its route up in the kernel's FIB and redirects it to the egress device itself. Anything
// else (new connections, TCP SYN/FIN/RST, NAT'd flows, fragments, IP options, packets for the
// node itself, FIB or neighbour misses) returns TCX_NEXT and takes the normal path unchanged.
//
// Why skipping netfilter changes no verdict: twill's policy table accepts every packet of an
// established connection with its first rule; a policy change that cuts established
// connections deletes their conntrack entries, after which the lookup here fails and the next
// packet is judged again on the normal path.
//
// Regenerate the Go bindings and objects: see internal/datapath/ebpfdp/doc.go.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual BSD/GPL";

// tcx return codes (uapi since 6.6; defined here so older headers build).
#define TWILL_TCX_NEXT -1
#define TWILL_TCX_REDIRECT 7

#define AF_INET 2
#define AF_INET6 10
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

// Conntrack status bits (include/uapi/linux/netfilter/nf_conntrack_common.h).
#define IPS_ASSURED (1UL << 2)
#define IPS_CONFIRMED (1UL << 3)
#define IPS_SRC_NAT (1UL << 4)
#define IPS_DST_NAT (1UL << 5)
#define IPS_SEQ_ADJUST (1UL << 6)
#define IPS_DYING (1UL << 9)
#define IPS_HELPER (1UL << 13)

// The entry must have been confirmed by netfilter and be assured (TCP: the handshake completed
// through netfilter; UDP: replies seen); any NAT, sequence adjustment (helpers) or a dying
// entry keeps the packet on the normal path.
#define FAST_REQUIRED (IPS_CONFIRMED | IPS_ASSURED)
#define FAST_EXCLUDED (IPS_SRC_NAT | IPS_DST_NAT | IPS_SEQ_ADJUST | IPS_DYING | IPS_HELPER)

// The kernel's struct nf_conn, only the fields read here, relocated by CO-RE at load time.
struct ip_ct_tcp {
	__u8 state;
} __attribute__((preserve_access_index));

union nf_conntrack_proto {
	struct ip_ct_tcp tcp;
} __attribute__((preserve_access_index));

struct nf_conn {
	unsigned long status;
	union nf_conntrack_proto proto;
} __attribute__((preserve_access_index));

// enum tcp_conntrack: only an established connection is carried. Once either side has sent
// its FIN, every packet (the last ACK among them) takes the normal path, so conntrack follows
// the close to TIME_WAIT rather than keeping a half-closed entry until it times out.
#define TCP_CONNTRACK_ESTABLISHED 3

// The kfuncs' options (net/netfilter/nf_conntrack_bpf.c). Only the first 12 bytes are passed,
// the size every kernel with these kfuncs accepts.
struct bpf_ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u8 reserved[2];
};
#define CT_OPTS_SIZE 12
#define CT_CURRENT_NETNS -1

extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *skb, struct bpf_sock_tuple *tuple, __u32 tuple__sz,
					 struct bpf_ct_opts *opts, __u32 opts__sz) __ksym;
extern void bpf_ct_release(struct nf_conn *ct) __ksym;

// Counters, per CPU, read by the agent and the tests.
enum stat {
	STAT_FAST_LOCAL,   // redirected to a pod on this node
	STAT_FAST_REMOTE,  // redirected towards another node
	STAT_NOT_IP_L4,    // not IPv4/IPv6 TCP or UDP, fragment, IP options or extension headers
	STAT_TCP_CONTROL,  // TCP SYN, FIN or RST
	STAT_NOT_FORWARD,  // the FIB says: not forwarded (for the node itself), or a miss
	STAT_NO_CT,        // no conntrack entry
	STAT_CT_NOT_READY, // entry not confirmed or assured, NAT'd, or TCP not established
	STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

// Host-side veths of this node's pods: a packet routed to one of them is handed straight to
// the pod's namespace (bpf_redirect_peer). The agent fills it as it attaches.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);   // ifindex
	__type(value, __u8);  // unused
} pod_links SEC(".maps");

static __always_inline void count(enum stat s)
{
	__u32 key = s;
	__u64 *v = bpf_map_lookup_elem(&stats, &key);
	if (v)
		*v += 1;
}

// l4 holds what the conntrack lookup and the FIB lookup need from the transport header.
struct l4 {
	__be16 sport, dport;
};

// read_l4 reads the ports at off, and refuses TCP control packets: conntrack must see
// connections open and close.
static __always_inline int read_l4(void *data, void *end, __u8 proto, struct l4 *out)
{
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = data;
		if ((void *)(th + 1) > end) {
			count(STAT_NOT_IP_L4);
			return -1;
		}
		if (th->syn || th->fin || th->rst) {
			count(STAT_TCP_CONTROL);
			return -1;
		}
		out->sport = th->source;
		out->dport = th->dest;
		return 0;
	}
	if (proto == IPPROTO_UDP) {
		struct udphdr *uh = data;
		if ((void *)(uh + 1) > end) {
			count(STAT_NOT_IP_L4);
			return -1;
		}
		out->sport = uh->source;
		out->dport = uh->dest;
		return 0;
	}
	count(STAT_NOT_IP_L4);
	return -1;
}

// ct_allows says whether conntrack has an entry for tuple that the fast path may carry.
static __always_inline int ct_allows(struct __sk_buff *skb, struct bpf_sock_tuple *tuple, __u32 tuple_size, __u8 proto)
{
	struct bpf_ct_opts opts = {.netns_id = CT_CURRENT_NETNS, .l4proto = proto};
	struct nf_conn *ct = bpf_skb_ct_lookup(skb, tuple, tuple_size, &opts, CT_OPTS_SIZE);
	if (!ct) {
		count(STAT_NO_CT);
		return 0;
	}
	unsigned long status = ct->status;
	__u8 tcp_state = proto == IPPROTO_TCP ? ct->proto.tcp.state : TCP_CONNTRACK_ESTABLISHED;
	bpf_ct_release(ct);
	if ((status & FAST_REQUIRED) != FAST_REQUIRED || (status & FAST_EXCLUDED) || tcp_state != TCP_CONNTRACK_ESTABLISHED) {
		count(STAT_CT_NOT_READY);
		return 0;
	}
	return 1;
}

// fib_route looks the route up; 0 when the packet is forwarded out of a device other than the
// one it came in on, with a resolved neighbour.
static __always_inline int fib_route(struct __sk_buff *skb, struct bpf_fib_lookup *fib)
{
	// tot_len stays 0: the kernel then checks the MTU against the skb itself, GSO included.
	long rc = bpf_fib_lookup(skb, fib, sizeof(*fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS || fib->ifindex == skb->ingress_ifindex) {
		count(STAT_NOT_FORWARD);
		return -1;
	}
	return 0;
}

// redirect hands the packet to its egress: into a local pod's namespace directly, or out of
// the device towards another node through the neighbour layer (which keeps neighbour entries
// fresh and fills in the MACs).
static __always_inline int redirect(struct bpf_fib_lookup *fib, struct ethhdr *eth)
{
	__u32 ifindex = fib->ifindex;
	if (bpf_map_lookup_elem(&pod_links, &ifindex)) {
		// Pods' neighbour entries are permanent, so the FIB's MACs are the ones to use.
		__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
		count(STAT_FAST_LOCAL);
		return bpf_redirect_peer(ifindex, 0);
	}
	struct bpf_redir_neigh nh = {.nh_family = fib->family};
	if (fib->family == AF_INET)
		nh.ipv4_nh = fib->ipv4_dst;
	else
		__builtin_memcpy(nh.ipv6_nh, fib->ipv6_dst, sizeof(nh.ipv6_nh));
	count(STAT_FAST_REMOTE);
	return bpf_redirect_neigh(ifindex, &nh, sizeof(nh), 0);
}

static __always_inline int fast_ipv4(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end) {
		count(STAT_NOT_IP_L4);
		return TWILL_TCX_NEXT;
	}
	if (ip->ihl != 5 || (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) || ip->ttl <= 1) {
		count(STAT_NOT_IP_L4);
		return TWILL_TCX_NEXT;
	}
	struct l4 ports;
	if (read_l4(ip + 1, end, ip->protocol, &ports) < 0)
		return TWILL_TCX_NEXT;

	struct bpf_fib_lookup fib = {
		.family = AF_INET,
		.tos = ip->tos,
		.l4_protocol = ip->protocol,
		.sport = ports.sport,
		.dport = ports.dport,
		.ipv4_src = ip->saddr,
		.ipv4_dst = ip->daddr,
		.ifindex = skb->ingress_ifindex,
	};
	// The FIB first: packets for the node itself (VXLAN's outer packets among them) leave
	// before the conntrack lookup.
	if (fib_route(skb, &fib) < 0)
		return TWILL_TCX_NEXT;

	struct bpf_sock_tuple tuple = {};
	tuple.ipv4.saddr = ip->saddr;
	tuple.ipv4.daddr = ip->daddr;
	tuple.ipv4.sport = ports.sport;
	tuple.ipv4.dport = ports.dport;
	if (!ct_allows(skb, &tuple, sizeof(tuple.ipv4), ip->protocol))
		return TWILL_TCX_NEXT;

	// The helpers above may have moved the packet: check the pointers again.
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	eth = data;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		return TWILL_TCX_NEXT;
	// What ip_forward does: one hop less, the header checksum updated incrementally (which also
	// keeps a CHECKSUM_COMPLETE sum valid, as the header's one's complement sum is unchanged).
	__u32 check = ip->check;
	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xFFFF));
	ip->ttl--;
	return redirect(&fib, eth);
}

static __always_inline int fast_ipv6(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	if ((void *)(ip6 + 1) > end) {
		count(STAT_NOT_IP_L4);
		return TWILL_TCX_NEXT;
	}
	// Extension headers (fragments among them) take the normal path.
	if (ip6->hop_limit <= 1) {
		count(STAT_NOT_IP_L4);
		return TWILL_TCX_NEXT;
	}
	struct l4 ports;
	if (read_l4(ip6 + 1, end, ip6->nexthdr, &ports) < 0)
		return TWILL_TCX_NEXT;

	struct bpf_fib_lookup fib = {
		.family = AF_INET6,
		.l4_protocol = ip6->nexthdr,
		.sport = ports.sport,
		.dport = ports.dport,
		.ifindex = skb->ingress_ifindex,
	};
	fib.flowinfo = *(__be32 *)ip6 & bpf_htonl(0x0FFFFFFF);
	__builtin_memcpy(fib.ipv6_src, &ip6->saddr, sizeof(fib.ipv6_src));
	__builtin_memcpy(fib.ipv6_dst, &ip6->daddr, sizeof(fib.ipv6_dst));
	if (fib_route(skb, &fib) < 0)
		return TWILL_TCX_NEXT;

	struct bpf_sock_tuple tuple = {};
	__builtin_memcpy(tuple.ipv6.saddr, &ip6->saddr, sizeof(tuple.ipv6.saddr));
	__builtin_memcpy(tuple.ipv6.daddr, &ip6->daddr, sizeof(tuple.ipv6.daddr));
	tuple.ipv6.sport = ports.sport;
	tuple.ipv6.dport = ports.dport;
	if (!ct_allows(skb, &tuple, sizeof(tuple.ipv6), ip6->nexthdr))
		return TWILL_TCX_NEXT;

	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	eth = data;
	ip6 = (void *)(eth + 1);
	if ((void *)(ip6 + 1) > end)
		return TWILL_TCX_NEXT;
	ip6->hop_limit--;
	return redirect(&fib, eth);
}

SEC("tcx/ingress")
int twill_fastpath(struct __sk_buff *skb)
{
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return fast_ipv4(skb);
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return fast_ipv6(skb);
	return TWILL_TCX_NEXT;
}
