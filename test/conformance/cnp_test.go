package conformance

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ClusterNetworkPolicy tiers (Admin Accept, Deny and Pass over NetworkPolicy; Baseline under
// it) enforced with real packets as the upstream API documents them. The CRD is installed
// while the agents run, as an operator would.
func TestClusterNetworkPolicyTiers(t *testing.T) {
	s := needSuite(t)
	ctx := t.Context()
	out, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/network-policy-api").Output()
	if err != nil {
		t.Fatalf("finding the network-policy-api module: %v", err)
	}
	manifest, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), "config/crd/standard/policy.networking.k8s.io_clusternetworkpolicies.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Cluster.InstallCNPCRD(ctx, manifest); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Cluster.DeleteAllCNPs(context.Background()); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	if err := s.WaitCNPEnforced(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	var total CaseResult
	for _, tc := range CNPCases() {
		res := s.RunCNP(ctx, tc)
		total.Probes += res.Probes
		total.Settled += res.Settled
		total.Mismatches = append(total.Mismatches, res.Mismatches...)
		t.Logf("case %q: %d probes, %d mismatches, %d settled on retry, %s",
			tc.Name, res.Probes, len(res.Mismatches), res.Settled, res.Took.Round(100*time.Millisecond))
		if res.Err != nil {
			t.Errorf("case %q: %v", tc.Name, res.Err)
		}
		for _, m := range res.Mismatches {
			t.Errorf("mismatch: %s", m)
		}
	}
	t.Logf("ClusterNetworkPolicy: %d cases, %d probes, %d mismatches, %d settled on retry",
		len(CNPCases()), total.Probes, len(total.Mismatches), total.Settled)
	total.Steps = len(CNPCases())
	writeSummary(t, "clusternetworkpolicy", total)
}
