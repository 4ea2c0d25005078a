package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/flow"
	"github.com/twill-net/twill/internal/kube"
	"github.com/twill-net/twill/internal/metrics"
	"github.com/twill-net/twill/internal/policy"
	"github.com/twill-net/twill/internal/policy/snapshot"
)

func policyCmd() *cobra.Command {
	var kubeconfig string
	cmd := &cobra.Command{Use: "policy", Short: "Explain and audit network policy as twill enforces it"}
	cmd.PersistentFlags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig path (default $KUBECONFIG)")
	load := func(cmd *cobra.Command) (*policy.Calculator, error) {
		cfg, err := kube.RESTConfig(kubeconfig)
		if err != nil {
			return nil, err
		}
		c, err := kube.NewClients(cfg, "twill-cli")
		if err != nil {
			return nil, err
		}
		return snapshot.Load(cmd.Context(), c)
	}
	cmd.AddCommand(policyCountersCmd())
	cmd.AddCommand(policyDropsCmd())
	cmd.AddCommand(&cobra.Command{
		Use:   "explain SRC DST PORT/PROTO",
		Short: "Say whether SRC may connect to DST (namespace/pod or IP) and which policies decide it",
		Args:  cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, err := policy.ParseTarget(args[0])
			if err != nil {
				return err
			}
			dst, err := policy.ParseTarget(args[1])
			if err != nil {
				return err
			}
			port, proto, err := parsePortProto(args[2])
			if err != nil {
				return err
			}
			calc, err := load(cmd)
			if err != nil {
				return err
			}
			ex, err := calc.Explain(src, dst, port, proto)
			if err != nil {
				return err
			}
			verdict := "DENIED"
			if ex.Allowed {
				verdict = "ALLOWED"
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%s: %s\n", verdict, ex.Packet)
			for _, d := range ex.Decisions {
				fmt.Fprintf(out, "  %s\n", d)
			}
			return nil
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "audit",
		Short: "List pods no policy covers, namespaces without default deny, and policies that select nothing",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			calc, err := load(cmd)
			if err != nil {
				return err
			}
			writeAudit(cmd.OutOrStdout(), calc.Audit())
			return nil
		},
	})
	return cmd
}

// parsePortProto reads "80/TCP" (the protocol defaults to TCP).
func parsePortProto(s string) (uint16, datapath.Protocol, error) {
	num, protoName, hasProto := strings.Cut(s, "/")
	proto := datapath.ProtocolTCP
	if hasProto {
		var err error
		if proto, err = datapath.ParseProtocol(strings.ToUpper(protoName)); err != nil {
			return 0, proto, err
		}
	}
	port, err := strconv.ParseUint(num, 10, 16)
	if err != nil {
		return 0, proto, fmt.Errorf("port %q: %w", num, err)
	}
	return uint16(port), proto, nil
}

func writeAudit(w io.Writer, r policy.AuditReport) {
	section := func(title string, n int) bool {
		fmt.Fprintf(w, "%s: %d\n", title, n)
		return n > 0
	}
	if section("Pods no policy selects (all traffic in that direction passes)", len(r.Unselected)) {
		for _, p := range r.Unselected {
			fmt.Fprintf(w, "  %s %s\n", p.Pod, p.Direction)
		}
	}
	if section("Namespaces without a default deny", len(r.NamespacesWithoutDefaultDeny)) {
		for _, n := range r.NamespacesWithoutDefaultDeny {
			fmt.Fprintf(w, "  %s %s\n", n.Namespace, n.Direction)
		}
	}
	if section("Policies that select no pod", len(r.SelectingNothing)) {
		for _, f := range r.SelectingNothing {
			fmt.Fprintf(w, "  %s %s\n", f.Tier, f.Policy)
		}
	}
	if section("Policy parts that cannot be enforced as written", len(r.Problems)) {
		for _, f := range r.Problems {
			fmt.Fprintf(w, "  %s %s: %s\n", f.Tier, f.Policy, f.Detail)
		}
	}
}

func policyCountersCmd() *cobra.Command {
	var url string
	var all bool
	cmd := &cobra.Command{
		Use:   "counters",
		Short: "Show what this node's agent counted: first packets allowed and dropped, by policy and rule",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			vs, err := metrics.ReadPolicyVerdicts(cmd.Context(), url)
			if err != nil {
				return err
			}
			return metrics.WriteVerdicts(cmd.OutOrStdout(), vs, all)
		},
	}
	cmd.Flags().StringVar(&url, "metrics-url", "http://127.0.0.1:9962"+metrics.Path, "the agent's metrics (its --metrics-address)")
	cmd.Flags().BoolVar(&all, "all", false, "list counters at zero too")
	return cmd
}

func policyDropsCmd() *cobra.Command {
	var url string
	var follow, asJSON bool
	cmd := &cobra.Command{
		Use:   "drops",
		Short: "Show the packets this node's agent saw policy drop: pod, peer, ports and the policy and rule (or default deny) that dropped each",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			write := func(e flow.DropEvent) error {
				return json.NewEncoder(out).Encode(e)
			}
			if !asJSON {
				table := flow.NewDropTable(out)
				write = func(e flow.DropEvent) error {
					table.Write(e)
					return table.Flush()
				}
				if !follow {
					write = func(e flow.DropEvent) error { table.Write(e); return nil }
					defer table.Flush()
				}
			}
			if follow {
				return flow.FollowDrops(cmd.Context(), url, write)
			}
			events, err := flow.ReadDrops(cmd.Context(), url)
			if err != nil {
				return err
			}
			for _, e := range events {
				if err := write(e); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&url, "drops-url", "http://127.0.0.1:9962"+flow.DropsPath, "the agent's drop events (served beside its metrics, --metrics-address)")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing drops as they happen")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per drop")
	return cmd
}
