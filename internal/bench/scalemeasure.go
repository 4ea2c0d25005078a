package bench

import (
	"fmt"
	"slices"
	"sort"
)

// nodeComponents are the per-node programs, in report order.
var nodeComponents = []string{compKubelet, compContainerd, compAgent, compKubeProxy}

// singleComponents are the programs the lab runs once, in report order.
var singleComponents = []string{"etcd", "kube_apiserver", "kube_controller_manager", "kube_scheduler", compSupervisor}

// scaleMeasurements turns a run into the report: the lab's start, the pods' time to Ready
// (half of them, all of them), and each component's resident memory with the pods, against
// the same figure with the lab idle just before (so the ratio is the growth the pods caused).
func scaleMeasurements(r scaleResult, cores int) []Measurement {
	lab := fmt.Sprintf("twill lab up --nodes %d (kubelet, containerd and the twill agent, which serves Services too, per node), %d cores, %s", r.nodes, cores, machineLoad())
	spread := podSpread(r.podsPerNode)
	out := []Measurement{{
		Metric: "scale_lab_up", Value: r.labUp.Seconds(), Unit: "s",
		Conditions: lab + "; from `up` to every node Ready, images built and imported",
	}}
	podsCond := fmt.Sprintf("%s; one Deployment of %d pods (workload image, topology spread over nodes), from its creation to each pod's Ready condition (polled every 0.5 s); %s",
		lab, r.pods, spread)
	if len(r.ready) < r.pods {
		// The wait ran out: say how many made it, and give no time for "all".
		out = append(out, Measurement{Metric: "scale_pods_ready_count", Value: float64(len(r.ready)), Unit: "pods",
			Conditions: fmt.Sprintf("only %d of %d pods Ready before the wait timed out; %s", len(r.ready), r.pods, podsCond)})
		if len(r.ready) >= (r.pods+1)/2 {
			out = append(out, Measurement{Metric: "scale_pods_ready_p50", Value: Percentile(r.ready, 100*float64((r.pods+1)/2)/float64(len(r.ready))).Seconds(), Unit: "s", Conditions: podsCond})
		}
	} else {
		for _, q := range []struct {
			name string
			p    float64
		}{{"scale_pods_ready_p50", 50}, {"scale_pods_ready_all", 100}} {
			out = append(out, Measurement{Metric: q.name, Value: Percentile(r.ready, q.p).Seconds(), Unit: "s", Conditions: podsCond})
		}
	}
	memCond := func(what string, n int) string {
		return fmt.Sprintf("VmRSS of %s (%d processes) with %d pods Ready (%s); baseline: the same, lab idle before the pods; %s",
			what, n, r.pods, spread, lab)
	}
	for _, c := range nodeComponents {
		loaded, idle := r.loaded[c], r.idle[c]
		if len(loaded) == 0 {
			continue
		}
		for _, stat := range []struct {
			name string
			f    func([]float64) float64
		}{{"median", median}, {"max", slices.Max[[]float64]}} {
			m := Measurement{Metric: fmt.Sprintf("scale_rss_%s_%s", c, stat.name), Value: stat.f(loaded), Unit: "MiB",
				Conditions: memCond(stat.name+" over the nodes' "+c, len(loaded))}
			if len(idle) > 0 {
				m = m.WithBaseline(stat.f(idle))
			}
			out = append(out, m)
		}
	}
	for _, c := range singleComponents {
		loaded, idle := r.loaded[c], r.idle[c]
		if len(loaded) == 0 {
			continue
		}
		m := Measurement{Metric: "scale_rss_" + c, Value: sumFloats(loaded), Unit: "MiB", Conditions: memCond(c, len(loaded))}
		if len(idle) > 0 {
			m = m.WithBaseline(sumFloats(idle))
		}
		out = append(out, m)
	}
	return out
}

func sumFloats(vs []float64) float64 {
	t := 0.0
	for _, v := range vs {
		t += v
	}
	return t
}

// podSpread says how many pods each node ran: "pods per node 9..11 over 10 nodes".
func podSpread(perNode map[string]int) string {
	if len(perNode) == 0 {
		return "no pods"
	}
	counts := make([]int, 0, len(perNode))
	for _, n := range perNode {
		counts = append(counts, n)
	}
	sort.Ints(counts)
	return fmt.Sprintf("pods per node %d..%d over %d nodes", counts[0], counts[len(counts)-1], len(counts))
}
