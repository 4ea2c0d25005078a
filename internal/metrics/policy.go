package metrics

import (
	"context"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/twill-net/twill/internal/datapath"
)

// Names of the policy metrics and their labels.
const (
	PolicyPacketsMetric = "twill_policy_verdict_packets_total"
	PolicyBytesMetric   = "twill_policy_verdict_bytes_total"
)

// Verdicts as the metrics spell them.
const (
	VerdictAllow = "allow"
	VerdictDrop  = "drop"
	VerdictPass  = "pass"
)

var policyLabels = []string{"tier", "policy", "direction", "rule", "verdict"}

var (
	policyPacketsDesc = prometheus.NewDesc(PolicyPacketsMetric,
		"First packets of connections judged by a policy rule (or by default deny), by the rule that decided.", policyLabels, nil)
	policyBytesDesc = prometheus.NewDesc(PolicyBytesMetric,
		"Bytes of the packets counted in "+PolicyPacketsMetric+".", policyLabels, nil)
)

// PolicyVerdicts exports a policy datapath's verdict counters. Actions maps Attribution IDs of
// Admin and Baseline rules to their action (a NetworkPolicy rule always allows); it is read
// at every scrape, so it follows policy changes.
type PolicyVerdicts struct {
	Reader  datapath.PolicyCounterReader
	Actions func() map[string]datapath.Action
}

var _ prometheus.Collector = (*PolicyVerdicts)(nil)

func (c *PolicyVerdicts) Describe(ch chan<- *prometheus.Desc) {
	ch <- policyPacketsDesc
	ch <- policyBytesDesc
}

func (c *PolicyVerdicts) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	counters, err := c.Reader.PolicyCounters(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(policyPacketsDesc, err)
		return
	}
	var actions map[string]datapath.Action
	if c.Actions != nil {
		actions = c.Actions()
	}
	for key, v := range counters {
		l := LabelsOf(key, actions)
		values := []string{l.Tier, l.Policy, l.Direction, l.Rule, l.Verdict}
		ch <- prometheus.MustNewConstMetric(policyPacketsDesc, prometheus.CounterValue, float64(v.Packets), values...)
		ch <- prometheus.MustNewConstMetric(policyBytesDesc, prometheus.CounterValue, float64(v.Bytes), values...)
	}
}

// VerdictLabels are the labels of one verdict counter.
type VerdictLabels struct {
	Tier, Policy, Direction, Rule, Verdict string
}

// LabelsOf splits a counter key of datapath.PolicyCounterReader into labels: a rule's
// Attribution ID ("tier/policy/direction/index", the policy "namespace/name" for a
// NetworkPolicy), or one of the keys of verdicts no rule makes.
func LabelsOf(key string, actions map[string]datapath.Action) VerdictLabels {
	switch key {
	case datapath.CounterOwnNode:
		return VerdictLabels{Direction: string(datapath.Ingress), Rule: "own-node", Verdict: VerdictAllow}
	case datapath.CounterInvalid:
		return VerdictLabels{Rule: "conntrack-invalid", Verdict: VerdictDrop}
	}
	for _, d := range []datapath.Direction{datapath.Ingress, datapath.Egress} {
		if key == datapath.DefaultDenyCounter(d) {
			return VerdictLabels{Tier: string(datapath.TierNetworkPolicy), Direction: string(d), Rule: "default-deny", Verdict: VerdictDrop}
		}
	}
	parts := strings.Split(key, "/")
	if len(parts) < 4 {
		return VerdictLabels{Rule: key}
	}
	n := len(parts)
	l := VerdictLabels{
		Tier: parts[0], Policy: strings.Join(parts[1:n-2], "/"), Direction: parts[n-2], Rule: parts[n-1],
		Verdict: VerdictAllow,
	}
	switch actions[key] {
	case datapath.ActionDeny:
		l.Verdict = VerdictDrop
	case datapath.ActionPass:
		l.Verdict = VerdictPass
	}
	return l
}

// RuleActions returns the action of every Admin and Baseline rule of s by Attribution ID.
func RuleActions(s *datapath.PolicyState) map[string]datapath.Action {
	out := map[string]datapath.Action{}
	for _, dp := range []*datapath.DirectionPolicy{&s.Ingress, &s.Egress} {
		for _, tier := range [][]datapath.Rule{dp.Admin, dp.Baseline} {
			for _, r := range tier {
				out[r.ID()] = r.Action
			}
		}
	}
	return out
}
