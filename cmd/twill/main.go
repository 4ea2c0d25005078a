// Command twill is the node agent and the command-line tool: `twill agent` runs on every node;
// the other subcommands inspect and operate a cluster. This file only wires flags to packages.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := &cobra.Command{
		Use:           "twill",
		Short:         "twill: pod networking for Kubernetes",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(agentCmd(), benchCmd(), connectivityCmd(), ipamCmd(), labCmd(), netcheckCmd(), policyCmd(), versionCmd())
	if err := root.ExecuteContext(ctx); err != nil {
		ee := (*exitError)(nil)
		if !errors.As(err, &ee) || !ee.quiet {
			fmt.Fprintln(os.Stderr, "twill:", err)
		}
		if ee != nil {
			os.Exit(ee.code)
		}
		os.Exit(1)
	}
}

// version is set at link time by the build (-X main.version=...).
var version = "dev"

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print twill's version",
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), version) },
	}
}
