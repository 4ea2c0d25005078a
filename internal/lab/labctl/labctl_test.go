package labctl

import (
	"os"
	"path/filepath"
	"testing"
)

func TestAutoRoutingPutsTheLastNodeInASecondSubnet(t *testing.T) {
	for _, tc := range []struct {
		routing string
		nodes   int
		want    []int
	}{
		{RoutingAuto, 3, []int{0, 0, 1}},
		{RoutingAuto, 1, []int{0}},
		{RoutingVXLAN, 3, []int{0, 0, 0}},
		{RoutingNative, 2, []int{0, 0}},
	} {
		o := Options{Nodes: tc.nodes, Routing: tc.routing}
		if err := o.validate(); err != nil {
			t.Fatal(err)
		}
		specs := o.nodeSpecs()
		for i, s := range specs {
			if s.Subnet != tc.want[i] || s.Name != "node"+string(rune('1'+i)) {
				t.Errorf("%s with %d nodes: node %d is %+v, want subnet %d", tc.routing, tc.nodes, i, s, tc.want[i])
			}
		}
	}
}

func TestOptionsAreChecked(t *testing.T) {
	for _, o := range []Options{{Nodes: 0, Routing: RoutingVXLAN}, {Nodes: 2, Routing: "bgp"}} {
		if err := o.validate(); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

// A pid file left by a supervisor that died, or naming a process that is not a supervisor,
// must not make `up` believe the lab runs.
func TestStalePidFileIsNoSupervisor(t *testing.T) {
	p := Paths{Dir: t.TempDir()}
	if pid := p.Supervisor(); pid != 0 {
		t.Errorf("no pid file: supervisor %d", pid)
	}
	// This test process is alive but is not `twill lab serve`.
	if err := p.writePid(); err != nil {
		t.Fatal(err)
	}
	if pid := p.Supervisor(); pid != 0 {
		t.Errorf("pid file naming the test process: supervisor %d", pid)
	}
	if err := os.WriteFile(filepath.Join(p.Dir, "supervisor.pid"), []byte("999999999\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if pid := p.Supervisor(); pid != 0 {
		t.Errorf("pid file naming no process: supervisor %d", pid)
	}
}

func TestStateRoundTrips(t *testing.T) {
	p := Paths{Dir: t.TempDir()}
	want := State{Phase: PhaseReady, Name: "twt-x", Routing: RoutingAuto, Kubeconfig: "/k",
		Nodes: []NodeState{{Name: "node1", IP: "10.254.1.2", Enter: []string{"--net=/run/netns/x"}, Kubelet: true}}}
	if err := p.writeState(want); err != nil {
		t.Fatal(err)
	}
	got, err := p.ReadState()
	if err != nil {
		t.Fatal(err)
	}
	if got.Phase != want.Phase || got.Name != want.Name || len(got.Nodes) != 1 || got.Nodes[0].Enter[0] != want.Nodes[0].Enter[0] {
		t.Errorf("read %+v, wrote %+v", got, want)
	}
}
