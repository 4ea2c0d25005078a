// Command cleanup removes the network namespaces that test runs killed before their own cleanup
// left behind (processes they started die with them; the namespaces stay). It only touches
// namespaces whose names start with the prefixes twill's tests use.
package main

import (
	"fmt"
	"os"

	"github.com/twill-net/twill/internal/lab/kubenode"
	"github.com/twill-net/twill/internal/lab/underlay"
)

// prefixes of the namespaces made by the e2e tests ("twe") and the package tests ("twt-"). A
// benchmark ("twb") cleans up after itself even when interrupted, and may be running now.
var prefixes = []string{"twe", "twt-"}

func main() {
	failed := false
	for _, p := range prefixes {
		// Kubelet nodes first: their shims and pods outlive a killed lab and hold its namespaces.
		if err := kubenode.CleanupStale(p); err != nil {
			fmt.Fprintln(os.Stderr, "cleanup:", err)
			failed = true
		}
		if err := underlay.CleanupStale(p); err != nil {
			fmt.Fprintln(os.Stderr, "cleanup:", err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}
