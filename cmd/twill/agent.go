package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"

	"github.com/spf13/cobra"

	"github.com/twill-net/twill/internal/agent"
	"github.com/twill-net/twill/internal/routing"
)

func agentCmd() *cobra.Command {
	cfg := agent.DefaultConfig()
	var nodeIP, mode, poolV4, poolV6, logLevel string
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the node agent (one per node: IPAM, routes, network policy, the CNI server)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if cfg.Routing.Mode, err = routing.ParseMode(mode); err != nil {
				return err
			}
			if nodeIP != "" {
				if cfg.NodeIP, err = netip.ParseAddr(nodeIP); err != nil {
					return fmt.Errorf("--node-ip: %w", err)
				}
			}
			if cfg.DefaultPoolV4, err = optionalPrefix("--default-pool-ipv4", poolV4); err != nil {
				return err
			}
			if cfg.DefaultPoolV6, err = optionalPrefix("--default-pool-ipv6", poolV6); err != nil {
				return err
			}
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			a, err := agent.New(cfg, log)
			if err != nil {
				return err
			}
			return a.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name in the API (default $NODE_NAME)")
	f.StringVar(&nodeIP, "node-ip", "", "this node's address for node-to-node traffic (default: the Node's InternalIP)")
	f.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig path (default $KUBECONFIG, then in-cluster)")
	f.StringVar(&cfg.CNISocket, "cni-socket", cfg.CNISocket, "unix socket the CNI plugin reaches the agent on")
	f.StringVar(&cfg.StateDir, "state-dir", cfg.StateDir, "directory for state that survives restarts")
	f.StringVar(&cfg.PendingDeleteDir, "pending-delete-dir", cfg.PendingDeleteDir, "where the plugin spools DELs made while the agent is down")
	f.StringVar(&cfg.CNIConfDir, "cni-conf-dir", "", "write twill's CNI config here once ready (e.g. /etc/cni/net.d); empty: don't")
	f.StringVar(&mode, "routing", string(cfg.Routing.Mode), "routing between nodes: vxlan, native or auto (native within the node's subnet, VXLAN across)")
	f.IntVar(&cfg.Routing.VNI, "vxlan-vni", cfg.Routing.VNI, "VXLAN network identifier")
	f.IntVar(&cfg.Routing.Port, "vxlan-port", cfg.Routing.Port, "VXLAN UDP port")
	f.IntVar(&cfg.Routing.MTU, "mtu", 0, "pod MTU (default: the node link's MTU minus the encapsulation overhead)")
	f.StringVar(&poolV4, "default-pool-ipv4", cfg.DefaultPoolV4.String(), "IPv4 pool created when the cluster has no IPPool (empty: none)")
	f.StringVar(&poolV6, "default-pool-ipv6", "", "IPv6 pool created when the cluster has no IPPool (empty: none), e.g. fd00:10:244::/56")
	f.DurationVar(&cfg.ReconcileInterval, "reconcile-interval", cfg.ReconcileInterval, "how often leaked addresses and blocks of deleted nodes are reclaimed")
	f.BoolVar(&cfg.Policy, "policy", cfg.Policy, "enforce NetworkPolicy and ClusterNetworkPolicy on this node's pods (nftables)")
	f.StringVar(&cfg.PolicyEstablished, "policy-established", cfg.PolicyEstablished,
		"what a policy change does to established connections it no longer allows: keep (they run on) or reset (conntrack entries of the affected pods are deleted, so their next packet is judged again)")
	f.BoolVar(&cfg.Services, "services", cfg.Services, "serve Services on this node (ClusterIP, NodePort, external and load balancer IPs) in place of kube-proxy")
	f.StringVar(&cfg.MetricsAddress, "metrics-address", cfg.MetricsAddress, "serve Prometheus metrics on this host:port (path /metrics); empty: don't")
	f.StringVar(&cfg.Datapath, "datapath", cfg.Datapath,
		"how forwarded packets are carried: auto (the eBPF fast path for established connections where the kernel can run it), ebpf (the same, and fail where it cannot), or nftables (routing and netfilter for every packet)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

func optionalPrefix(flag, s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, fmt.Errorf("%s: %w", flag, err)
	}
	return p.Masked(), nil
}
