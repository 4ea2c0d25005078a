package bench

import (
	"context"
	"encoding/json"
	"math"
	"net"
	"strings"
	"testing"
	"time"
)

func TestParseIperf3(t *testing.T) {
	out := []byte(`{"start":{},"intervals":[],"end":{"sum_sent":{"bits_per_second":9.9e9},
		"sum_received":{"seconds":5.0,"bits_per_second":2.5e10}}}`)
	got, err := parseIperf3(out)
	if err != nil || got != 25 {
		t.Errorf("parseIperf3 = %v, %v; want 25 Gbit/s", got, err)
	}
	if _, err := parseIperf3([]byte(`{"error":"unable to connect to server: Connection refused"}`)); err == nil ||
		!strings.Contains(err.Error(), "Connection refused") {
		t.Errorf("iperf3's error is not reported: %v", err)
	}
	if _, err := parseIperf3([]byte(`{"end":{}}`)); err == nil {
		t.Error("a run that received nothing is accepted")
	}
	if _, err := parseIperf3([]byte("iperf3: error")); err == nil {
		t.Error("output that is not JSON is accepted")
	}
}

func TestDatapathMeasurements(t *testing.T) {
	s := dpSamples{}
	for _, v := range []float64{10, 30, 20} {
		s.add(scVethLimit, metricThroughput, v)
	}
	for _, v := range []float64{8, 10} {
		s.add(scNodeLimit, metricThroughput, v)
	}
	s.add(scSameNode, metricThroughput, 15)
	s.add(scNative, metricThroughput, 8.1)
	s.add(scVXLAN, metricThroughput, 6)
	s.add(scRefCrossNode, metricThroughput, 7.5)
	s.add(scNative, metricCRR, 1000) // no limit for CRR: no ratio
	s.add(scNative+nftablesKeySuffix, metricThroughput, 7)
	got := datapathMeasurements(s, dpConditions{rounds: 3, duration: 5 * time.Second, cores: 2})
	by := map[string]Measurement{}
	for _, m := range got {
		by[m.Metric] = m
	}
	if len(by) != len(got) {
		t.Errorf("metric names repeat: %v", got)
	}
	check := func(name string, value, baseline float64) {
		t.Helper()
		m, ok := by[name]
		if !ok {
			t.Errorf("no %s in %v", name, got)
			return
		}
		if m.Value != value || m.Baseline != baseline {
			t.Errorf("%s = %v against %v, want %v against %v", name, m.Value, m.Baseline, value, baseline)
		}
		if baseline != 0 && math.Abs(m.Ratio-value/baseline) > 1e-9 {
			t.Errorf("%s ratio %v, want %v", name, m.Ratio, value/baseline)
		}
		if m.Conditions == "" {
			t.Errorf("%s says nothing of its conditions", name)
		}
	}
	check("datapath_tcp_throughput_veth_limit", 20, 0) // median of three
	check("datapath_tcp_throughput_node_limit", 9, 0)  // median of two
	check("datapath_tcp_throughput_twill_same_node", 15, 20)
	check("datapath_tcp_throughput_twill_native_cross_node", 8.1, 9)
	check("datapath_tcp_throughput_twill_vxlan_cross_node", 6, 9)
	check("datapath_tcp_throughput_reference_cross_node", 7.5, 9)
	check("datapath_tcp_throughput_vxlan_vs_native", 6, 8.1)
	check("datapath_tcp_throughput_native_vs_reference", 8.1, 7.5)
	check("datapath_tcp_crr_twill_native_cross_node", 1000, 0)
	check("datapath_tcp_throughput_twill_native_cross_node_nftables", 7, 9)
	check("datapath_tcp_throughput_native_ebpf_vs_nftables", 8.1, 7)
	if _, ok := by["datapath_tcp_throughput_reference_same_node"]; ok {
		t.Error("a scenario without samples is reported")
	}
	if _, ok := by["datapath_tcp_throughput_same_node_vs_reference"]; ok {
		t.Error("a comparison without baseline samples is reported")
	}
	if c := by["datapath_tcp_throughput_vxlan_vs_native"].Conditions; !strings.Contains(c, ">= 0.90") {
		t.Errorf("the VXLAN comparison does not state its target: %q", c)
	}
	if c := by["datapath_tcp_throughput_veth_limit"].Conditions; !strings.Contains(c, "min 10") || !strings.Contains(c, "max 30") ||
		!strings.Contains(c, "3 runs of 5s") || !strings.Contains(c, "2 cores") {
		t.Errorf("conditions do not give the spread and the run: %q", c)
	}
	if u := by["datapath_tcp_crr_twill_native_cross_node"].Unit; u != "trans/s" {
		t.Errorf("CRR unit %q", u)
	}
}

// The request/response tool against its server on loopback: both modes make transactions and
// report a rate; a server that is not there is an error, not a zero rate.
func TestRRTool(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	served := make(chan error, 1)
	go func() { served <- ServeRR(ctx, addr) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("ServeRR: %v", err)
		}
	}()
	var last error
	for range 50 { // the server may not listen yet
		if _, last = RunRRClient(ctx, addr, false, 0); last == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if last != nil {
		t.Fatal(last)
	}
	for _, crr := range []bool{false, true} {
		r, err := RunRRClient(ctx, addr, crr, 200*time.Millisecond)
		if err != nil {
			t.Fatalf("crr=%v: %v", crr, err)
		}
		if r.Transactions < 10 || r.Seconds < 0.2 || r.Rate() <= 0 {
			t.Errorf("crr=%v: %+v, rate %v", crr, r, r.Rate())
		}
		// Connect times are measured under CRR only (RR connects once).
		if hasConnect := r.ConnectP50Micros > 0 && r.ConnectP99Micros >= r.ConnectP50Micros; hasConnect != crr {
			t.Errorf("crr=%v: connect p50 %v µs, p99 %v µs", crr, r.ConnectP50Micros, r.ConnectP99Micros)
		}
		out, _ := json.Marshal(r)
		if back, err := parseRRResult(out); err != nil || back != r {
			t.Errorf("parseRRResult(%s) = %+v, %v", out, back, err)
		}
	}
	if _, err := parseRRResult([]byte(`{"transactions":0,"seconds":1}`)); err == nil {
		t.Error("a run without transactions is accepted")
	}
	cancel()
	if err := <-served; err != nil {
		t.Errorf("ServeRR: %v", err)
	}
	served <- nil
	if _, err := RunRRClient(t.Context(), addr, false, 0); err == nil {
		t.Error("a client without a server reported success")
	}
}

// Every round measures each twill scenario once on each datapath and the agent-less ones once,
// with three agent restarts, and starts where the previous round (or the setup) left the agents.
func TestDatapathPhases(t *testing.T) {
	scenarios := []dpScenario{{key: scVethLimit}, {key: scRefCrossNode}}
	for _, m := range []string{routingNative, routingVXLAN} {
		for _, d := range []string{datapathEBPF, datapathNFTables} {
			scenarios = append(scenarios, dpScenario{key: m + d, mode: m, datapath: d})
		}
	}
	cur := dpPhase{routingVXLAN, datapathEBPF} // where the setup leaves the agents
	for round := range 3 {
		runs, restarts := map[string]int{}, 0
		for _, ph := range dpPhases(round) {
			if ph != cur {
				restarts++
				cur = ph
			}
			for _, sc := range scenarios {
				if ph.runs(sc) {
					runs[sc.key]++
				}
			}
		}
		if restarts != 3 {
			t.Errorf("round %d restarts the agents %d times, want 3", round, restarts)
		}
		for _, sc := range scenarios {
			if runs[sc.key] != 1 {
				t.Errorf("round %d measures %s %d times, want once", round, sc.key, runs[sc.key])
			}
		}
	}
}
