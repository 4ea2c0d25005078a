package main

import (
	"fmt"
	"net/netip"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/twill-net/twill/internal/connectivity"
	"github.com/twill-net/twill/internal/lab/kubenode"
	"github.com/twill-net/twill/internal/lab/labctl"
)

func connectivityCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "connectivity",
		Short: "Check a cluster's pod network",
	}
	cmd.AddCommand(connectivityTestCmd())
	return cmd
}

func connectivityTestCmd() *cobra.Command {
	var (
		kubeconfig string
		lbRange    string
		cfg        connectivity.Config
	)
	cmd := &cobra.Command{
		Use:   "test",
		Short: "Run the connectivity catalogue against a cluster and print a table",
		Long: `Run the connectivity catalogue against the cluster of --kubeconfig (else $KUBECONFIG, else
the lab's when it is up, else ~/.kube/config): pod to pod on the same node and to each other
node (TCP, UDP, HTTP; the server must see the client pod's own address), a UDP datagram filling
the pod's MTU, unfragmented, node to pod, pod to node (hostNetwork pods), pod to a hostPort, pod to a
ClusterIP Service (TCP, same node and across nodes; needs kube-proxy), a NodePort Service at
another node's address (TCP and UDP, from a pod and from a node), cluster DNS (the API's
Service by its full name, the test's Service by its short name, and a connection to it by name;
skipped when the cluster has no kube-dns Service), a closed port refused rather than dropped,
and more of Services: a LoadBalancer IP and an external IP, from a pod and from a node (addresses
from --lb-range, which the test writes into the Service as a load balancer controller would;
without it the LoadBalancer scenarios wait for the cluster's controller and the external IP ones
are skipped), sessionAffinity ClientIP against a control without, externalTrafficPolicy Local
(source kept, local endpoint only, nothing forwarded from a node without one),
internalTrafficPolicy Local, hairpin, a Service without endpoints refused at once, and a
headless Service. Pods run the workload image (` + connectivity.DefaultImage + `,
imagePullPolicy Never) in the namespace ` + connectivity.DefaultNamespace + `, deleted at the end. Exits 1 when any scenario fails.

Not yet in the catalogue: policy.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			if kubeconfig == "" && os.Getenv("KUBECONFIG") == "" {
				if st, err := (labctl.Paths{Dir: labctl.DirFromEnv()}).ReadState(); err == nil && st.Phase == labctl.PhaseReady {
					kubeconfig = st.Kubeconfig
					if lbRange == "" {
						lbRange = kubenode.LoadBalancerRange.String() // routed on the lab's nodes
					}
				}
			}
			if lbRange != "" {
				p, err := netip.ParsePrefix(lbRange)
				if err != nil {
					return fmt.Errorf("--lb-range: %w", err)
				}
				cfg.LoadBalancerRange = p
			}
			rules := clientcmd.NewDefaultClientConfigLoadingRules()
			rules.ExplicitPath = kubeconfig
			rest, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
			if err != nil {
				return fmt.Errorf("loading the kubeconfig: %w", err)
			}
			cfg.REST = rest
			if cfg.Kube, err = kubernetes.NewForConfig(rest); err != nil {
				return err
			}
			fmt.Fprintf(out, "connectivity test against %s\n", rest.Host)
			w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "SCENARIO\tRESULT\tTIME\tDETAIL")
			start := time.Now()
			results, err := connectivity.Run(cmd.Context(), cfg, func(r connectivity.Result) {
				result := "ok"
				switch {
				case r.Skipped:
					result = "skipped"
				case !r.OK:
					result = "FAIL"
				}
				// Rows are aligned once all are in; meanwhile each shows as a progress line.
				fmt.Fprintf(cmd.ErrOrStderr(), "  %s: %s\n", r.Scenario, result)
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.Scenario, result, r.Took.Round(time.Millisecond), r.Detail)
			})
			if err != nil {
				return err
			}
			_ = w.Flush()
			failed := connectivity.Failed(results)
			fmt.Fprintf(out, "%d scenarios, %d failed, in %s\n", len(results), failed, time.Since(start).Round(100*time.Millisecond))
			if failed > 0 {
				return fmt.Errorf("%d of %d connectivity scenarios failed", failed, len(results))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of the cluster to test")
	f.StringVar(&cfg.Namespace, "namespace", connectivity.DefaultNamespace, "namespace for the test's pods (created and deleted)")
	f.StringVar(&cfg.Image, "image", connectivity.DefaultImage, "image holding the twill binary as /twill")
	f.DurationVar(&cfg.Timeout, "timeout", 3*time.Second, "timeout of each probe")
	f.StringVar(&lbRange, "lb-range", "", "CIDR of free addresses routed to the nodes, for the LoadBalancer and externalIPs scenarios (the lab's by default against the lab)")
	return cmd
}
