package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/twill-net/twill/internal/lab/labctl"
	"github.com/twill-net/twill/internal/lab/upstream"
)

// labPrograms are the upstream programs the lab runs, and kubectl for its user.
var labPrograms = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl", "coredns"}

func labCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "A real multi-node Kubernetes cluster in network namespaces of this machine (root)",
		Long: `A real multi-node Kubernetes cluster in network namespaces of this machine: a control plane,
and nodes each with a kubelet, containerd, the twill agent and twill-cni. Its files live in
$` + labctl.EnvDir + ` (default ` + labctl.DefaultDir + `).`,
	}
	cmd.AddCommand(labUpCmd(), labServeCmd(), labStatusCmd(), labExecCmd(), labDownCmd())
	return cmd
}

func labUpCmd() *cobra.Command {
	var o labctl.UpOptions
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Bring the lab up (in the background) and print how to use it",
		Long: `Bring the lab up: build what it needs (the upstream programs on first use, cached; the pause
and twill workload images), start a supervisor in the background that runs the cluster, and
follow its progress until every node is Ready. Running it again while the lab is up only
reports it. With --routing auto the last node sits in a second underlay subnet, so both
native routing (same subnet) and VXLAN (across subnets) are in use; with vxlan or native all
nodes share one subnet.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, out := cmd.Context(), cmd.OutOrStdout()
			if os.Geteuid() != 0 {
				return errors.New("the lab needs root (it creates namespaces, mounts and cgroups)")
			}
			o.Paths = labctl.Paths{Dir: labctl.DirFromEnv()}
			if pid := o.Paths.Supervisor(); pid != 0 {
				st, _ := o.Paths.ReadState()
				fmt.Fprintf(out, "the lab is already up (supervisor pid %d, phase %s)\n", pid, st.Phase)
				printUsage(out, st)
				return nil
			}
			var err error
			if o.Self, err = os.Executable(); err != nil {
				return err
			}
			o.TwillBin = o.Self
			o.CNIBin = filepath.Dir(o.Self)
			if _, err := os.Stat(filepath.Join(o.CNIBin, "twill-cni")); err != nil {
				return fmt.Errorf("twill-cni must sit beside twill (go build -o bin/ ./cmd/twill ./cmd/twill-cni): %w", err)
			}
			fmt.Fprintln(out, "preparing the upstream programs (built once, then cached)")
			if o.UpstreamBin, err = upstream.Binaries(ctx, labPrograms...); err != nil {
				return err
			}
			o.Progress = trimTime{out}
			start := time.Now()
			st, err := labctl.Up(ctx, o)
			if errors.Is(err, labctl.ErrAlreadyUp) {
				fmt.Fprintln(out, err)
				printUsage(out, st)
				return nil
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "\nthe lab is up: %d nodes, routing %s, services by %s, in %s\n", len(st.Nodes)-1, st.Routing, st.Services, time.Since(start).Round(time.Second))
			fmt.Fprintf(out, "cluster DNS: %s\n", st.DNS)
			printUsage(out, st)
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Nodes, "nodes", 3, "number of nodes (besides the control plane)")
	f.StringVar(&o.Routing, "routing", labctl.RoutingVXLAN, "routing between nodes: vxlan, native or auto")
	f.StringVar(&o.Services, "services", labctl.ServicesTwill, "who serves Services: twill (the agents, no kube-proxy), kube-proxy (upstream, nftables mode) or kube-proxy-iptables")
	f.StringVar(&o.Name, "name", labctl.DefaultName, "prefix of the lab's network namespaces, cgroups and sockets")
	return cmd
}

// trimTime drops slog's "time=..." field from progress lines: the user watches them live.
type trimTime struct{ w io.Writer }

func (t trimTime) Write(p []byte) (int, error) {
	line := string(p)
	if strings.HasPrefix(line, "time=") {
		if _, rest, ok := strings.Cut(line, " "); ok {
			line = rest
		}
	}
	_, err := io.WriteString(t.w, "  "+line)
	return len(p), err
}

func printUsage(out io.Writer, st labctl.State) {
	if st.Kubeconfig == "" {
		return
	}
	fmt.Fprintf(out, `
use it:
  export KUBECONFIG=%s
  %s get nodes -o wide
  twill lab exec node1 -- ip addr
  twill connectivity test
  twill lab down
`, st.Kubeconfig, st.Kubectl)
}

func labServeCmd() *cobra.Command {
	var o labctl.Options
	cmd := &cobra.Command{
		Use:    "serve",
		Short:  "The lab's supervisor (started by `twill lab up`)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Paths = labctl.Paths{Dir: labctl.DirFromEnv()}
			o.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
			return labctl.Serve(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Nodes, "nodes", 3, "number of nodes")
	f.StringVar(&o.Routing, "routing", labctl.RoutingVXLAN, "vxlan, native or auto")
	f.StringVar(&o.Services, "services", labctl.ServicesTwill, "twill, kube-proxy or kube-proxy-iptables")
	f.StringVar(&o.Name, "name", labctl.DefaultName, "prefix of the lab's namespaces")
	f.StringVar(&o.UpstreamBin, "upstream-bin", "", "directory of the upstream programs")
	f.StringVar(&o.TwillBin, "twill-bin", "", "the twill binary the agents run")
	f.StringVar(&o.CNIBin, "cni-bin", "", "directory holding twill-cni")
	return cmd
}

func labStatusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the lab's state, nodes and kubeconfig",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			p := labctl.Paths{Dir: labctl.DirFromEnv()}
			st, err := p.ReadState()
			if errors.Is(err, os.ErrNotExist) {
				fmt.Fprintf(out, "no lab in %s (twill lab up)\n", p.Dir)
				return nil
			}
			if err != nil {
				return err
			}
			pid := p.Supervisor()
			if pid == 0 {
				fmt.Fprintf(out, "lab %s: %s, but its supervisor is not running (twill lab down cleans up)\n", st.Name, st.Phase)
			} else {
				fmt.Fprintf(out, "lab %s: %s (supervisor pid %d), routing %s, services by %s, up in %s\n", st.Name, st.Phase, pid, st.Routing, st.Services, st.Took)
			}
			if st.Error != "" {
				fmt.Fprintf(out, "error: %s\nlog: %s\n", st.Error, p.Log())
			}
			if st.DNS != "" {
				fmt.Fprintf(out, "cluster DNS: %s\n", st.DNS)
			}
			ready := nodeReadiness(cmd.Context(), st.Kubeconfig)
			w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NODE\tIP\tSUBNET\tKUBELET\tREADY")
			for _, n := range st.Nodes {
				r := "-"
				if n.Kubelet {
					if r = ready[n.Name]; r == "" {
						r = "?"
					}
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%v\t%s\n", n.Name, n.IP, n.Subnet, n.Kubelet, r)
			}
			_ = w.Flush()
			if pid != 0 {
				printUsage(out, st)
			}
			return nil
		},
	}
}

// nodeReadiness asks the lab's API for each node's Ready condition ("?" when it cannot).
func nodeReadiness(ctx context.Context, kubeconfig string) map[string]string {
	out := map[string]string{}
	if kubeconfig == "" {
		return out
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return out
	}
	cfg.Timeout = 5 * time.Second
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return out
	}
	nodes, err := kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return out
	}
	for _, n := range nodes.Items {
		out[n.Name] = "False"
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				out[n.Name] = string(c.Status)
			}
		}
	}
	return out
}

func labExecCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "exec NODE -- CMD [ARGS...]",
		Short: "Run a command on a lab node (its network, mount and UTS namespaces)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := labctl.Paths{Dir: labctl.DirFromEnv()}
			err := labctl.Exec(cmd.Context(), p, args[0], args[1:], os.Stdin, cmd.OutOrStdout(), cmd.ErrOrStderr())
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				return &exitError{code: ee.ExitCode(), err: err, quiet: true}
			}
			return err
		},
	}
}

func labDownCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Remove the lab: processes, namespaces, mounts, cgroups and its files",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p := labctl.Paths{Dir: labctl.DirFromEnv()}
			if err := labctl.Down(cmd.Context(), p, "", cmd.OutOrStdout()); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "the lab is down")
			return nil
		},
	}
}
