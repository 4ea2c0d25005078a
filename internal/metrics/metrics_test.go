package metrics

import (
	"bytes"
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/twill-net/twill/internal/datapath"
)

type countersFrom map[string]datapath.PolicyCounter

func (c countersFrom) PolicyCounters(context.Context) (map[string]datapath.PolicyCounter, error) {
	return c, nil
}

// What an operator reads from `twill policy counters`: every counter of the datapath with its
// policy, rule and verdict, drops first, and an Admin Deny counted as a drop.
func TestPolicyVerdictsRoundTripThroughMetrics(t *testing.T) {
	admin := datapath.Attribution{Tier: datapath.TierAdmin, Policy: datapath.PolicyRef{Name: "block-db"},
		Direction: datapath.Ingress, Index: 0, Action: datapath.ActionDeny}
	np := datapath.Attribution{Tier: datapath.TierNetworkPolicy, Policy: datapath.PolicyRef{Namespace: "shop", Name: "allow-web"},
		Direction: datapath.Ingress, Index: 2, Action: datapath.ActionAccept}
	state := &datapath.PolicyState{Ingress: datapath.DirectionPolicy{Admin: []datapath.Rule{{Attribution: admin}}}}
	reader := countersFrom{
		admin.ID(): {Packets: 3, Bytes: 180},
		np.ID():    {Packets: 40, Bytes: 2400},
		datapath.DefaultDenyCounter(datapath.Egress): {Packets: 7, Bytes: 420},
		datapath.CounterOwnNode:                      {Packets: 0},
	}
	reg, err := NewRegistry(&PolicyVerdicts{Reader: reader, Actions: func() map[string]datapath.Action { return RuleActions(state) }})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()

	vs, err := ReadPolicyVerdicts(context.Background(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	want := []VerdictCount{
		{VerdictLabels{Tier: "networkpolicy", Direction: "egress", Rule: "default-deny", Verdict: VerdictDrop}, 7, 420},
		{VerdictLabels{Tier: "admin", Policy: "block-db", Direction: "ingress", Rule: "0", Verdict: VerdictDrop}, 3, 180},
		{VerdictLabels{Tier: "networkpolicy", Policy: "shop/allow-web", Direction: "ingress", Rule: "2", Verdict: VerdictAllow}, 40, 2400},
		{VerdictLabels{Direction: "ingress", Rule: "own-node", Verdict: VerdictAllow}, 0, 0},
	}
	if len(vs) != len(want) {
		t.Fatalf("got %d counters, want %d: %+v", len(vs), len(want), vs)
	}
	for i := range want {
		if vs[i] != want[i] {
			t.Errorf("counter %d: got %+v, want %+v", i, vs[i], want[i])
		}
	}
	var out bytes.Buffer
	if err := WriteVerdicts(&out, vs, false); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "own-node") || !strings.Contains(out.String(), "shop/allow-web") {
		t.Errorf("table without zero counters:\n%s", out.String())
	}
}

func TestReadPolicyVerdictsSaysWhenNoAgentAnswers(t *testing.T) {
	_, err := ReadPolicyVerdicts(context.Background(), "http://127.0.0.1:1/metrics")
	if err == nil || !strings.Contains(err.Error(), "--metrics-address") {
		t.Fatalf("want an error naming --metrics-address, got %v", err)
	}
}
