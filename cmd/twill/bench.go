package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/twill-net/twill/internal/bench"
)

func benchCmd() *cobra.Command {
	var out string
	var opts bench.Options
	cmd := &cobra.Command{
		Use:   "bench SUITE",
		Short: "Run a benchmark suite (or all) and write OUT/SUITE.json",
		Long: "Run a benchmark suite on this machine (root: it builds its own lab) and write its report as\n" +
			"OUT/SUITE.json, printed as a table too. Suites: " + suiteList() + ", or all.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			suites, err := bench.Select(args[0])
			if err != nil {
				return err
			}
			opts.Progress = cmd.ErrOrStderr()
			for _, s := range suites {
				rep, err := s.Run(cmd.Context(), opts)
				if err != nil {
					// A suite that failed part way may hand back what it measured before.
					if len(rep.Measurements) > 0 {
						if path, werr := rep.Write(out, cmd.OutOrStdout()); werr == nil {
							fmt.Fprintln(cmd.ErrOrStderr(), "wrote what was measured before the failure to", path)
						}
					}
					return fmt.Errorf("bench %s: %w", s.Name, err)
				}
				path, err := rep.Write(out, cmd.OutOrStdout())
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.ErrOrStderr(), "wrote", path)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "bench/out", "directory the reports are written to")
	cmd.Flags().IntVar(&opts.Iterations, "iterations", 0, "rounds each measurement repeats (0: the suite's default; services: single services added per scale and proxy)")
	cmd.Flags().IntSliceVar(&opts.ServiceScales, "scales", nil, "services suite: numbers of services to measure at (default 1000,10000,50000)")
	cmd.Flags().StringSliceVar(&opts.ServiceProxies, "proxies", nil, "services suite: proxies to measure (default "+strings.Join(bench.AllServiceProxies, ",")+")")
	cmd.AddCommand(rrServerCmd(), rrClientCmd())
	return cmd
}

// rrServerCmd and rrClientCmd are the datapath suite's request/response tool, which it runs
// in the lab's namespaces; hidden: they are parts of a benchmark, not something to run alone.
func rrServerCmd() *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:    "rr-server",
		Short:  "Answer 1-byte requests with 1-byte responses (the datapath suite's TCP_RR/CRR server)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE:   func(cmd *cobra.Command, _ []string) error { return bench.ServeRR(cmd.Context(), listen) },
	}
	cmd.Flags().StringVar(&listen, "listen", "", "address:port to listen on")
	_ = cmd.MarkFlagRequired("listen")
	return cmd
}

func rrClientCmd() *cobra.Command {
	var target string
	var duration time.Duration
	var crr bool
	cmd := &cobra.Command{
		Use:    "rr-client",
		Short:  "Measure TCP_RR (or TCP_CRR) against an rr-server and print the result as JSON",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := bench.RunRRClient(cmd.Context(), target, crr, duration)
			if err != nil {
				return err
			}
			return json.NewEncoder(cmd.OutOrStdout()).Encode(res)
		},
	}
	cmd.Flags().StringVar(&target, "target", "", "address:port of the rr-server")
	cmd.Flags().DurationVar(&duration, "duration", 5*time.Second, "how long to measure (0: one transaction)")
	cmd.Flags().BoolVar(&crr, "connect-per-request", false, "a new connection per transaction (TCP_CRR)")
	_ = cmd.MarkFlagRequired("target")
	return cmd
}

func suiteList() string {
	s := ""
	for i, suite := range bench.Suites() {
		if i > 0 {
			s += ", "
		}
		s += suite.Name + " (" + suite.Short + ")"
	}
	return s
}
