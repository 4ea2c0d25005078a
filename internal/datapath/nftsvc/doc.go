// Package nftsvc is the nftables service datapath: a datapath.ServiceReconciler that serves
// the service calculator's Services (ClusterIP, NodePort, external and load balancer IPs) in
// place of kube-proxy, from one table owned by twill, inet "twill-services" (TableName).
//
// # Why a table of its own
//
// The policy datapath (nftdp) owns inet "twill" and rebuilds it by deleting and re-creating
// it in one transaction; so does this package with its table. Two tables let each reconciler
// replace its own atomically without touching, or having to re-render, the other's.
//
// # Table layout
//
//	nat-prerouting, nat-output   nat base chains (dstnat): jump services. Pods and the outside
//	                             enter through prerouting, the node's own processes through
//	                             output.
//	services                     ip daddr . meta l4proto . th dport vmap @frontends4 (cluster,
//	                             external and load balancer IPs), then, for a local
//	                             destination address other than loopback (fib daddr type
//	                             local), meta l4proto . th dport vmap @nodeports4; same for 6
//	svc4-<port>                  cluster traffic of one service port: affinity lookups, then
//	                             a random pick: numgen random mod N-i == 0 goto ep4-<port>-<i>
//	                             for i < N-1, then goto the last endpoint's chain
//	ext4-<port>                  external traffic (NodePort, external IPs): marked for
//	                             masquerade, or with externalTrafficPolicy Local the node's own
//	                             connections go to the cluster chain and the rest pick among
//	                             the local endpoints, keeping the client's address
//	ep4-<port>-<endpoint>        hairpin mark (client is the endpoint), affinity update, DNAT
//	filter-prerouting,           filter base chains at dstnat-10: jump no-endpoints, which
//	filter-output                sends frontends in @no-endpoints4 / @no-endpoint-nodeports4 to
//	                             reject-service: TCP reset, else ICMP port unreachable, so a
//	                             client without endpoints fails at once instead of timing out
//	nat-postrouting              (srcnat) jump masquerading: a packet with MasqueradeMark loses
//	                             the bit and is masqueraded (fully random ports)
//
// Internal and external traffic policies choose which endpoints a chain picks from
// (Backends or LocalBackends); a chain that would have none is not made and its frontends
// go to the no-endpoints sets instead. Every object holding addresses exists once per family
// (suffix 4 or 6); a dual-stack service has both.
//
// # Cost
//
// The first packet of a connection costs one verdict-map lookup whatever the number of
// services, then up to one numgen comparison per endpoint of the port (and, with affinity,
// one set lookup per endpoint); later packets follow conntrack. The pick is not one numgen
// lookup in a verdict map because every such map measured made the kernel's work quadratic
// in the table (see pick). A change to a service sends only that service's elements and
// chains: the reconciler keeps each service's rendered objects and sends their difference.
// (The kernel still validates the whole table in every transaction that adds a jump or a
// goto: a cost linear in the table, small beside nft's below.) A Full change
// (and the first apply, and any after a refused transaction) deletes and re-creates the table
// in one transaction, which the kernel applies atomically: no service is missing at any
// moment. Connections already translated keep their conntrack entries across a rebuild; the
// affinity sets start empty again.
//
// Programming goes through the nft binary (knftables), and nft 1.0 loads every chain of the
// table before it runs a transaction: at 10,000 services that is about 0.3 s of CPU for any
// change, however small, and 2.5 s at 50,000 (measured on a busy machine); a Full of 10,000
// is about 3.5 s of nft CPU. See BenchmarkAddOneService and BenchmarkFullResync.
//
// # Marks
//
// The policy datapath owns the conntrack mark of pod connections, so the masquerade request
// travels in one packet mark bit (MasqueradeMark, 0x2000), which kube-proxy (0x4000, 0x8000),
// Calico (upper 16 bits) and Cilium (bits 8-11) leave alone. It is set in the nat chains and
// cleared at postrouting.
//
// # Known gaps
//
// With externalTrafficPolicy Local, pods reaching an external or load balancer IP pick among
// this node's endpoints only (kube-proxy sends them to the cluster chain, which needs the
// cluster's pod CIDRs, unknown here); the node's own connections do take the cluster path.
// Traffic to a cluster IP from outside the cluster is not masqueraded (the same reason).
// A Local policy without local endpoints rejects (kube-proxy drops external traffic then).
package nftsvc
