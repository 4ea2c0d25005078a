package bench

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/twill-net/twill/internal/policy"
	"github.com/twill-net/twill/internal/testutil"
)

func TestPolicyWorldIsTheAskedSize(t *testing.T) {
	w := newPolicyWorld(DefaultPolicyScale)
	if len(w.policies) != 1000 || len(w.pods) != 10000 {
		t.Fatalf("%d policies and %d pods, want 1,000 and 10,000", len(w.policies), len(w.pods))
	}
	if n := w.localPods(); n < 100 || n > 200 {
		t.Errorf("%d pods on the measured node, want a realistic share (100-200)", n)
	}
	seen := map[string]bool{}
	for _, p := range w.pods {
		a := p.IPs[0].String()
		if seen[a] {
			t.Fatalf("address %s given twice", a)
		}
		seen[a] = true
	}
	names := map[string]bool{}
	for _, np := range w.policies {
		key := np.Namespace + "/" + np.Name
		if names[key] {
			t.Fatalf("policy %s made twice", key)
		}
		names[key] = true
	}
	c := policy.NewCalculator()
	w.load(c)
	s := c.State()
	if len(s.Endpoints) != 10000 || len(s.Ingress.NetworkPolicy) < 1000 {
		t.Errorf("state has %d endpoints and %d ingress rules", len(s.Endpoints), len(s.Ingress.NetworkPolicy))
	}
	if len(s.Identities) < 100 {
		t.Errorf("only %d identities: labels no policy reads must be ignored, but app/tier/version are read", len(s.Identities))
	}
}

// TestRunPolicySmall runs the whole suite on a small cluster: every kind of change is
// measured and read back from a real kernel table.
func TestRunPolicySmall(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft is not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := RunPolicy(ctx, PolicyOptions{Scale: PolicyScale{Namespaces: 3, AppsPerNS: 5, Pods: 300, Nodes: 4,
		PoliciesPerNS: 20, ChangesPerKind: 4}})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Measurement{}
	for _, m := range rep.Measurements {
		got[m.Metric] = m
	}
	for _, kind := range changeKinds {
		for _, p := range []string{"p50", "p99"} {
			m, ok := got["policy_"+kind+"_to_enforced_"+p]
			if !ok || m.Value <= 0 || m.Unit != "ms" {
				t.Errorf("%s %s: %+v (present %v)", kind, p, m, ok)
			}
		}
	}
	if m := got["policy_ruleset_elements"]; m.Value < 300 || !strings.Contains(m.Conditions, "chains") {
		t.Errorf("rule set elements: %+v, want at least one per pod address", m)
	}
	if m := got["policy_go_heap"]; m.Value <= 0 {
		t.Errorf("heap: %+v", m)
	}
}
