package main

import (
	"github.com/spf13/cobra"

	"github.com/twill-net/twill/internal/ipam"
	"github.com/twill-net/twill/internal/ipam/kubestore"
	"github.com/twill-net/twill/internal/kube"
)

func ipamCmd() *cobra.Command {
	var kubeconfig string
	cmd := &cobra.Command{Use: "ipam", Short: "Inspect cluster IP address management"}
	cmd.PersistentFlags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig path (default $KUBECONFIG)")
	cmd.AddCommand(&cobra.Command{
		Use:   "status",
		Short: "Show pools, blocks per node, addresses used and free, and how many more pods fit",
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := kube.RESTConfig(kubeconfig)
			if err != nil {
				return err
			}
			c, err := kube.NewClients(cfg, "twill-cli")
			if err != nil {
				return err
			}
			store := kubestore.New(c.Dynamic)
			pools, err := store.ListPools(cmd.Context())
			if err != nil {
				return err
			}
			blocks, err := store.ListBlocks(cmd.Context())
			if err != nil {
				return err
			}
			return ipam.Summarize(pools, blocks).Write(cmd.OutOrStdout())
		},
	})
	return cmd
}
