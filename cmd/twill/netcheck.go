package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/twill-net/twill/internal/netcheck"
)

// Exit codes of `twill netcheck connect` and `resolve`, which `twill connectivity test` reads
// back from pods.
const (
	exitTimeout     = 2
	exitRefused     = 3
	exitUnreachable = 4
	exitNotFound    = 5
)

// exitError makes main exit with code after printing err (unless quiet: the command already
// said what happened, as a program run by `lab exec` does).
type exitError struct {
	code  int
	err   error
	quiet bool
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func netcheckCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "netcheck",
		Short: "The built-in workload: an echo server and a prober (run in the lab's workload image)",
	}
	cmd.AddCommand(netcheckServeCmd(), netcheckConnectCmd(), netcheckProbeCmd(), netcheckResolveCmd())
	return cmd
}

func netcheckServeCmd() *cobra.Command {
	var s netcheck.Server
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Answer on TCP, UDP and HTTP ports with this pod's name and the client address seen",
		Long: `Answer on the given ports with this pod's name ($POD_NAME, else the hostname) and the
client address the server saw: on TCP a line "pod=NAME client=IP:PORT" then an echo of what the
client sends; on UDP the same line for each datagram; on HTTP a JSON object {"pod","client"}.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s.Name = os.Getenv("POD_NAME")
			if s.Name == "" {
				s.Name, _ = os.Hostname()
			}
			s.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
			return s.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.IntSliceVar(&s.TCP, "tcp", nil, "TCP ports (comma-separated)")
	f.IntSliceVar(&s.UDP, "udp", nil, "UDP ports")
	f.IntSliceVar(&s.HTTP, "http", nil, "HTTP ports")
	return cmd
}

func netcheckConnectCmd() *cobra.Command {
	var (
		protocol string
		count    int
		opts     netcheck.Options
	)
	cmd := &cobra.Command{
		Use:   "connect ADDR:PORT",
		Short: "Reach a netcheck server and print its reply",
		Long: fmt.Sprintf(`Reach the netcheck server at ADDR:PORT and print its reply ("pod=NAME client=IP:PORT").
With --count N, make N connections one after the other and print each reply on its line; the
first that fails ends the run, with its exit code.

Exit codes tell the outcomes apart:
  0  the server answered
  1  another error (bad arguments, unexpected reply)
  %d  timeout: nothing answered in time (dropped on the way)
  %d  refused: the destination said nothing listens there (TCP reset, ICMP port unreachable)
  %d  unreachable: no route, or ICMP host or network unreachable`,
			exitTimeout, exitRefused, exitUnreachable),
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// One reply line per connection; the first failure ends the series.
			for range max(count, 1) {
				reply, err := netcheck.Probe(cmd.Context(), protocol, args[0], opts)
				switch {
				case errors.Is(err, netcheck.ErrRefused):
					return &exitError{code: exitRefused, err: err}
				case errors.Is(err, netcheck.ErrTimeout):
					return &exitError{code: exitTimeout, err: err}
				case errors.Is(err, netcheck.ErrUnreachable):
					return &exitError{code: exitUnreachable, err: err}
				case err != nil:
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), reply)
			}
			return nil
		},
	}
	f := cmd.Flags()
	// Many connections in one run: a check of how a Service spreads them costs one exec
	// into the pod, not one per connection.
	f.IntVar(&count, "count", 1, "make this many connections, one after the other, printing each reply")
	f.StringVar(&protocol, "protocol", netcheck.TCP, "tcp, udp or http")
	f.DurationVar(&opts.Timeout, "timeout", 2*time.Second, "give up after this long")
	f.BoolVar(&opts.FillMTU, "fill-mtu", false, "udp: send datagrams as large as the path MTU, never fragmented")
	return cmd
}

func netcheckProbeCmd() *cobra.Command {
	var (
		parallel int
		opts     netcheck.Options
	)
	cmd := &cobra.Command{
		Use:   "probe [PROTOCOL:ADDR:PORT ...]",
		Short: "Reach many netcheck servers at once and print one result line per target",
		Long: `Reach every target (tcp:ADDR:PORT, udp:ADDR:PORT or http:ADDR:PORT; an IPv6 ADDR in
brackets), at most --parallel at once, and print one line per target, in the order given:

  TARGET RESULT DETAIL

RESULT is connected (DETAIL is the server's reply), timeout, refused, unreachable or error
(DETAIL says what failed). Without arguments the targets are read from stdin, one a line.
The exit code is 0 whenever every target has its line, whatever the results.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			var targets []netcheck.Target
			if len(args) == 0 {
				var err error
				if targets, err = netcheck.ReadTargets(cmd.InOrStdin()); err != nil {
					return err
				}
			}
			for _, a := range args {
				t, err := netcheck.ParseTarget(a)
				if err != nil {
					return err
				}
				targets = append(targets, t)
			}
			out := cmd.OutOrStdout()
			for _, r := range netcheck.ProbeAll(cmd.Context(), targets, opts, parallel) {
				fmt.Fprintln(out, r)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&parallel, "parallel", 64, "probe at most this many targets at once")
	f.DurationVar(&opts.Timeout, "timeout", 2*time.Second, "give up on a target after this long")
	return cmd
}

func netcheckResolveCmd() *cobra.Command {
	var opts netcheck.ResolveOptions
	cmd := &cobra.Command{
		Use:   "resolve NAME",
		Short: "Look a name up as a pod does and print its addresses, one a line",
		Long: fmt.Sprintf(`Look NAME up with Go's own resolver, reading /etc/resolv.conf (in a pod: the cluster DNS,
the search list and ndots the kubelet wrote), and print its addresses, one a line, sorted.

Exit codes tell the outcomes apart:
  0  the name resolved
  1  another error (bad arguments, a server failure)
  %d  timeout: no DNS server answered in time
  %d  not found: the DNS answered that the name does not exist`,
			exitTimeout, exitNotFound),
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			addrs, err := netcheck.Resolve(cmd.Context(), args[0], opts)
			switch {
			case errors.Is(err, netcheck.ErrNotFound):
				return &exitError{code: exitNotFound, err: err}
			case errors.Is(err, netcheck.ErrTimeout):
				return &exitError{code: exitTimeout, err: err}
			case err != nil:
				return err
			}
			for _, a := range addrs {
				fmt.Fprintln(cmd.OutOrStdout(), a)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.DurationVar(&opts.Timeout, "timeout", 3*time.Second, "give up after this long")
	f.StringVar(&opts.Server, "server", "", "ask this DNS server (IP:PORT) instead of those of /etc/resolv.conf")
	return cmd
}
