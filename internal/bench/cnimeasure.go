package bench

import (
	"fmt"
	"time"
)

// cniConditions say under what the CNI figures were measured.
type cniConditions struct {
	nodes, pods, rounds, cores int
}

// cniWhat says what each operation's figure is the wall time of.
var cniWhat = map[string]string{
	"add":  "libcni AddNetworkList wall time incl. plugin exec",
	"del":  "libcni DelNetworkList wall time incl. plugin exec",
	"exec": "exec of twill-cni doing nothing (CNI VERSION via libcni): the floor under ADD and DEL",
}

var cniBaselineWhat = map[string]string{
	"add":  "bridge+host-local",
	"del":  "bridge+host-local",
	"exec": "exec of bridge (VERSION)",
}

// cniMeasurements turns both targets' samples into the report: p50 and p99 of ADD, DEL and the
// bare exec of the plugin, one pod at a time and all pods at once, each with the baseline's
// same figure.
func cniMeasurements(twill, baseline cniSamples, c cniConditions) []Measurement {
	type series struct {
		op, mode   string
		concurrent bool
		twill, ref []time.Duration
	}
	all := []series{
		{"add", "sequential", false, twill.addSequential, baseline.addSequential},
		{"del", "sequential", false, twill.delSequential, baseline.delSequential},
		{"exec", "sequential", false, twill.execSequential, baseline.execSequential},
		{"add", fmt.Sprintf("concurrent%d", c.pods), true, twill.addConcurrent, baseline.addConcurrent},
		{"del", fmt.Sprintf("concurrent%d", c.pods), true, twill.delConcurrent, baseline.delConcurrent},
		{"exec", fmt.Sprintf("concurrent%d", c.pods), true, twill.execConcurrent, baseline.execConcurrent},
	}
	var out []Measurement
	for _, s := range all {
		load := "one pod at a time"
		if s.concurrent {
			load = fmt.Sprintf("%d pods at once", c.pods)
		}
		cond := fmt.Sprintf("%s; twill-cni+agent on %d lab node(s), %s, %d samples (%d rounds), IPv4, %d cores; baseline: %s, same load, same run",
			cniWhat[s.op], c.nodes, load, len(s.twill), c.rounds, c.cores, cniBaselineWhat[s.op])
		for _, p := range []float64{50, 99} {
			m := Measurement{
				Metric:     fmt.Sprintf("cni_%s_latency_p%.0f_%s", s.op, p, s.mode),
				Value:      Millis(Percentile(s.twill, p)),
				Unit:       "ms",
				Conditions: cond,
			}
			if len(s.ref) > 0 {
				m = m.WithBaseline(Millis(Percentile(s.ref, p)))
			}
			out = append(out, m)
		}
	}
	return out
}
