package main

import (
	"fmt"

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
	cmd.Flags().IntVar(&opts.Iterations, "iterations", 0, "rounds each measurement repeats (0: the suite's default)")
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
