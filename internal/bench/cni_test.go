package bench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
)

func ms(vals ...int) []time.Duration {
	out := make([]time.Duration, len(vals))
	for i, v := range vals {
		out[i] = time.Duration(v) * time.Millisecond
	}
	return out
}

func TestCNIMeasurements(t *testing.T) {
	twill := cniSamples{
		addSequential: ms(1, 2, 3, 4), delSequential: ms(5, 5), execSequential: ms(1),
		addConcurrent: ms(10, 20, 30, 40), delConcurrent: ms(7), execConcurrent: ms(2),
	}
	baseline := cniSamples{
		addSequential: ms(2, 4, 6, 8), delSequential: ms(10), execSequential: ms(1),
		addConcurrent: ms(40, 80), delConcurrent: ms(7), execConcurrent: ms(4),
	}
	got := cniMeasurements(twill, baseline, cniConditions{nodes: 1, pods: 50, rounds: 4, cores: 2})
	byName := map[string]Measurement{}
	for _, m := range got {
		byName[m.Metric] = m
		if m.Unit != "ms" || m.Conditions == "" {
			t.Errorf("%s: unit %q, conditions %q", m.Metric, m.Unit, m.Conditions)
		}
	}
	if len(got) != 12 || len(byName) != 12 {
		t.Fatalf("got %d measurements (%d names), want 12 distinct: %v", len(got), len(byName), got)
	}
	p99 := byName["cni_add_latency_p99_concurrent50"]
	if p99.Value != 40 || p99.Baseline != 80 || p99.Ratio != 0.5 {
		t.Errorf("add p99 concurrent = %+v, want 40 ms against 80 ms, ratio 0.5", p99)
	}
	if !strings.Contains(p99.Conditions, "50 pods at once") || !strings.Contains(p99.Conditions, "4 samples") ||
		!strings.Contains(p99.Conditions, "2 cores") || !strings.Contains(p99.Conditions, "bridge+host-local") {
		t.Errorf("conditions do not say what was measured: %q", p99.Conditions)
	}
	if m := byName["cni_add_latency_p50_sequential"]; m.Value != 2 || m.Baseline != 4 {
		t.Errorf("add p50 sequential = %+v, want 2 ms against 4 ms", m)
	}
	if m := byName["cni_exec_latency_p99_concurrent50"]; !strings.Contains(m.Conditions, "VERSION") {
		t.Errorf("exec figure does not say it is a bare exec: %q", m.Conditions)
	}
	// No baseline samples: no baseline, rather than a ratio to zero.
	got = cniMeasurements(twill, cniSamples{}, cniConditions{pods: 50})
	if got[0].Baseline != 0 || got[0].Ratio != 0 {
		t.Errorf("without baseline samples got %+v", got[0])
	}
}

func TestBenchContainerIDsAreDistinct(t *testing.T) {
	seen := map[string]bool{}
	for _, target := range []string{"twill", "bridge+host-local"} {
		for round := -1; round < 4; round++ {
			for pod := range 50 {
				id := benchContainerID(target, pod, round)
				if seen[id] {
					t.Fatalf("container ID %s given twice", id)
				}
				seen[id] = true
			}
		}
	}
	if benchContainerID("twill", 1, 2) != benchContainerID("twill", 1, 2) {
		t.Error("container IDs are not deterministic")
	}
}

func TestBaselineConfList(t *testing.T) {
	data, err := baselineConfList("twb1234-br", "/tmp/x/host-local")
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.NetworkConfFromBytes(data)
	if err != nil {
		t.Fatalf("baseline config does not parse: %v\n%s", err, data)
	}
	if len(list.Plugins) != 1 || list.Plugins[0].Network.Type != "bridge" || list.CNIVersion != "1.0.0" {
		t.Errorf("baseline list: %s", data)
	}
	for _, want := range []string{`"bridge":"twb1234-br"`, `"dataDir":"/tmp/x/host-local"`, `"ipMasq":false`, baselineSubnet} {
		if !strings.Contains(string(data), want) {
			t.Errorf("baseline config lacks %s: %s", want, data)
		}
	}
	if _, err := baselineConfList("a-bridge-name-too-long", "/tmp"); err == nil {
		t.Error("a bridge name over 15 characters was accepted")
	}
}

func TestTwillBinariesNeedsPluginBeside(t *testing.T) {
	dir := t.TempDir()
	twill := filepath.Join(dir, "twill")
	if err := os.WriteFile(twill, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, _, err := twillBinaries(twill); err == nil || !strings.Contains(err.Error(), "make build") {
		t.Fatalf("without twill-cni beside twill: %v; want an error telling how to build both", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "twill-cni"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	bin, cniDir, err := twillBinaries(twill)
	if err != nil || bin != twill || cniDir != dir {
		t.Fatalf("twillBinaries = %q, %q, %v; want %q, %q", bin, cniDir, err, twill, dir)
	}
}

func TestSelectSuites(t *testing.T) {
	all, err := Select(AllSuites)
	if err != nil || len(all) != len(Suites()) || len(all) == 0 {
		t.Fatalf("Select(all) = %v, %v", all, err)
	}
	cni, err := Select("cni")
	if err != nil || len(cni) != 1 || cni[0].Name != "cni" {
		t.Fatalf("Select(cni) = %v, %v", cni, err)
	}
	if _, err := Select("nope"); err == nil || !strings.Contains(err.Error(), "cni") {
		t.Fatalf("Select(nope) = %v; want an error listing the suites", err)
	}
}
