package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os/exec"
	"runtime"
	"slices"
	"time"

	"github.com/twill-net/twill/internal/lab/cluster"
	"github.com/twill-net/twill/internal/lab/underlay"
)

// The datapath suite measures what a pod's traffic gets: TCP throughput (one stream), the
// request/response rate on one connection and the connect-per-request rate, pod to pod on one
// node and across nodes with twill's native routing and with its VXLAN tunnel, and the same
// for the reference baseline (Debian's bridge + host-local with host-gw routes, on lab nodes
// of the same underlay). Each figure is reported as a ratio to its limit on this machine,
// measured in the same run: a bare veth pair between two namespaces for traffic within a
// node, node-to-node traffic over the lab underlay for traffic across nodes. twill is measured
// with each of its datapaths: the eBPF fast path for established connections (its default
// where the kernel runs it, the rows the targets are computed for) and nftables alone (the
// "_nftables" rows).

// DatapathOptions configure the datapath suite.
type DatapathOptions struct {
	// Rounds repeats every figure (default 3); the report gives the median.
	Rounds int
	// Duration of each single figure (default 5s).
	Duration time.Duration
	// TwillBin, UpstreamBin, BaselinePluginDir: as in CNIOptions.
	TwillBin, UpstreamBin, BaselinePluginDir string
	Progress                                 io.Writer
}

// Defaults of DatapathOptions.
const (
	DefaultDatapathRounds   = 3
	DefaultDatapathDuration = 5 * time.Second
)

// The metrics every scenario reports.
const (
	metricThroughput = "tcp_throughput"
	metricRR         = "tcp_rr"
	metricCRR        = "tcp_crr"
)

var dpMetrics = []string{metricThroughput, metricRR, metricCRR}

// The scenarios, by the key their metrics are named with.
const (
	scVethLimit    = "veth_limit"
	scNodeLimit    = "node_limit"
	scSameNode     = "twill_same_node"
	scNative       = "twill_native_cross_node"
	scVXLAN        = "twill_vxlan_cross_node"
	scRefSameNode  = "reference_same_node"
	scRefCrossNode = "reference_cross_node"
	routingNative  = "native"
	routingVXLAN   = "vxlan"
	// twill's datapaths: the scenarios above run on the eBPF fast path, and again on nftables
	// alone under their key with this suffix.
	datapathEBPF      = "ebpf"
	datapathNFTables  = "nftables"
	nftablesKeySuffix = "_nftables"
	datapathLabName   = "twb" // + random hex, as the cni suite
)

// dpScenario is one client/server pair.
type dpScenario struct {
	key string
	// mode is the agents' routing mode the scenario needs ("": any); datapath their datapath
	// ("": any).
	mode, datapath string
	client, server *underlay.Node
	addr           netip.Addr
}

// dpSamples are a run's figures: scenario -> metric -> one value per round.
type dpSamples map[string]map[string][]float64

func (s dpSamples) add(scenario, metric string, v float64) {
	if s[scenario] == nil {
		s[scenario] = map[string][]float64{}
	}
	s[scenario][metric] = append(s[scenario][metric], v)
}

func runDatapathSuite(ctx context.Context, opts Options) (Report, error) {
	return RunDatapath(ctx, DatapathOptions{Rounds: opts.Iterations, Progress: opts.Progress})
}

// RunDatapath builds its lab (two twill nodes, two reference nodes, a bare veth pair),
// measures, removes everything it made and returns the report.
func RunDatapath(ctx context.Context, opts DatapathOptions) (rep Report, err error) {
	if opts.Rounds <= 0 {
		opts.Rounds = DefaultDatapathRounds
	}
	if opts.Duration <= 0 {
		opts.Duration = DefaultDatapathDuration
	}
	if opts.BaselinePluginDir == "" {
		opts.BaselinePluginDir = referencePluginDir
	}
	progress := opts.Progress
	if progress == nil {
		progress = io.Discard
	}
	say := func(format string, args ...any) { fmt.Fprintf(progress, "bench datapath: "+format+"\n", args...) }
	if _, err := exec.LookPath("iperf3"); err != nil {
		return rep, fmt.Errorf("the datapath suite needs iperf3 (apt-get install iperf3): %w", err)
	}
	if err := requirePlugins(opts.BaselinePluginDir, "bridge", "host-local"); err != nil {
		return rep, fmt.Errorf("the baseline needs Debian's reference plugins (apt-get install containernetworking-plugins): %w", err)
	}
	run, err := prepareLabRun(ctx, opts.TwillBin, opts.UpstreamBin, "datapath", datapathLabName, "etcd", "kube-apiserver")
	if err != nil {
		return rep, err
	}
	twillBin, cniDir, dir, name := run.twillBin, run.cniDir, run.dir, run.name
	opts.UpstreamBin = run.upstreamBin
	cleanupCtx := context.WithoutCancel(ctx)
	defer run.keepLogsOnFailure(&err, say)

	say("starting a two-node lab cluster %s (etcd, kube-apiserver, twill agents, native routing)", name)
	lab, err := cluster.Start(ctx, cluster.Options{
		Name: name, Dir: dir, UpstreamBin: opts.UpstreamBin, TwillBin: twillBin, CNIBin: cniDir,
		Nodes:     []cluster.NodeSpec{{Name: "n1"}, {Name: "n2"}},
		AgentArgs: []string{"--routing", routingNative},
		Log:       slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return rep, fmt.Errorf("starting the lab cluster: %w", err)
	}
	defer func() { err = errors.Join(err, lab.Close()) }()

	vethClient, vethServer, removeVeth, err := newVethPair(name)
	defer func() { err = errors.Join(err, removeVeth()) }()
	if err != nil {
		return rep, fmt.Errorf("making the bare veth pair: %w", err)
	}
	say("wiring the reference nodes (bridge + host-local, host-gw routes)")
	refSubnets := []netip.Prefix{netip.MustParsePrefix("10.250.1.0/24"), netip.MustParsePrefix("10.250.2.0/24")}
	ref, removeRef, err := newReferenceNodes(ctx, lab, name, dir, opts.BaselinePluginDir, refSubnets, 2)
	defer func() { err = errors.Join(err, removeRef()) }()
	if err != nil {
		return rep, err
	}

	var pods []*cluster.Pod
	defer func() {
		for _, p := range pods {
			err = errors.Join(err, lab.Remove(cleanupCtx, p))
		}
	}()
	addPod := func(node, podName string) (*cluster.Pod, error) {
		p, err := lab.AddPodWith(ctx, lab.Node(node), cluster.PodOptions{Name: podName})
		if err != nil {
			return nil, err
		}
		pods = append(pods, p)
		return p, nil
	}
	// Pods take their MTU from the mode their agent runs in when they are wired (VXLAN's is
	// 50 bytes smaller), so each mode has pods of its own, made under it.
	say("creating pods under native routing, then under VXLAN")
	nativeA, err := addPod("n1", "dp-native-a")
	if err != nil {
		return rep, err
	}
	nativeB, err := addPod("n1", "dp-native-b")
	if err != nil {
		return rep, err
	}
	nativeC, err := addPod("n2", "dp-native-c")
	if err != nil {
		return rep, err
	}
	cur := dpPhase{routingVXLAN, datapathEBPF}
	if err := setAgents(ctx, lab, cur); err != nil {
		return rep, err
	}
	vxlanA, err := addPod("n1", "dp-vxlan-a")
	if err != nil {
		return rep, err
	}
	vxlanC, err := addPod("n2", "dp-vxlan-c")
	if err != nil {
		return rep, err
	}

	r1, r2 := ref[0], ref[1]
	scenarios := []dpScenario{
		{key: scVethLimit, client: vethClient, server: vethServer, addr: vethServer.IP},
		{key: scNodeLimit, client: r1.node, server: r2.node, addr: r2.node.IP},
		{key: scRefSameNode, client: r1.pods[0].sandbox, server: r1.pods[1].sandbox, addr: r1.pods[1].sandbox.IP},
		{key: scRefCrossNode, client: r1.pods[0].sandbox, server: r2.pods[0].sandbox, addr: r2.pods[0].sandbox.IP},
	}
	for _, sc := range []dpScenario{
		{key: scSameNode, mode: routingNative, client: nativeA.Sandbox, server: nativeB.Sandbox, addr: nativeB.IPv4()},
		{key: scNative, mode: routingNative, client: nativeA.Sandbox, server: nativeC.Sandbox, addr: nativeC.IPv4()},
		{key: scVXLAN, mode: routingVXLAN, client: vxlanA.Sandbox, server: vxlanC.Sandbox, addr: vxlanC.IPv4()},
	} {
		nft := sc
		sc.datapath, nft.datapath, nft.key = datapathEBPF, datapathNFTables, sc.key+nftablesKeySuffix
		scenarios = append(scenarios, sc, nft)
	}
	// Servers once per pair of namespaces: the nftables scenarios share their pods.
	stopServers, err := startServers(twillBin, uniqueServers(scenarios))
	defer stopServers()
	if err != nil {
		return rep, err
	}

	samples := dpSamples{}
	for round := range opts.Rounds {
		for _, ph := range dpPhases(round) {
			if ph != cur {
				if err := setAgents(ctx, lab, ph); err != nil {
					return rep, err
				}
				cur = ph
			}
			for _, sc := range scenarios {
				if !ph.runs(sc) {
					continue
				}
				say("round %d/%d: %s", round+1, opts.Rounds, sc.key)
				if err := measureScenario(ctx, twillBin, sc, opts.Duration, samples); err != nil {
					return rep, fmt.Errorf("%s: %w", sc.key, err)
				}
			}
		}
	}
	cond := dpConditions{rounds: opts.Rounds, duration: opts.Duration, cores: runtime.NumCPU()}
	return Report{Suite: "datapath", Measurements: datapathMeasurements(samples, cond)}, nil
}

// dpPhase is how the agents run while some scenarios are measured.
type dpPhase struct{ mode, datapath string }

// dpPhases is a round's order of phases: each round starts where the last one ended (the
// first where the setup left the agents), so a round needs three agent restarts.
func dpPhases(round int) []dpPhase {
	ph := []dpPhase{
		{routingVXLAN, datapathEBPF}, {routingVXLAN, datapathNFTables},
		{routingNative, datapathNFTables}, {routingNative, datapathEBPF},
	}
	if round%2 == 1 {
		slices.Reverse(ph)
	}
	return ph
}

// runs says whether sc is measured in phase p; scenarios that need no agent at all run in
// the native fast path phase.
func (p dpPhase) runs(sc dpScenario) bool {
	if sc.mode == "" {
		return p == dpPhase{routingNative, datapathEBPF}
	}
	return sc.mode == p.mode && sc.datapath == p.datapath
}

// setAgents restarts every agent in the phase's routing mode and datapath.
func setAgents(ctx context.Context, lab *cluster.Cluster, p dpPhase) error {
	for _, n := range lab.Nodes() {
		if err := n.RestartAgent(ctx, "--routing", p.mode, "--datapath", p.datapath); err != nil {
			return fmt.Errorf("restarting %s's agent with --routing %s --datapath %s: %w", n.Name, p.mode, p.datapath, err)
		}
	}
	return nil
}

// uniqueServers keeps the first scenario of each server address.
func uniqueServers(scenarios []dpScenario) []dpScenario {
	seen := map[netip.Addr]bool{}
	var out []dpScenario
	for _, sc := range scenarios {
		if !seen[sc.addr] {
			seen[sc.addr] = true
			out = append(out, sc)
		}
	}
	return out
}

// startServers starts an iperf3 server and a request/response server in every scenario's
// server namespace.
func startServers(twillBin string, scenarios []dpScenario) (stop func(), err error) {
	var stops []func()
	stop = func() {
		for _, s := range stops {
			s()
		}
	}
	for _, sc := range scenarios {
		if !sc.addr.IsValid() {
			return stop, fmt.Errorf("%s: the server has no IPv4 address", sc.key)
		}
		s, err := startIperf3Server(sc.server, sc.addr)
		if err != nil {
			return stop, err
		}
		stops = append(stops, s)
		rr, err := startRRServer(twillBin, sc.server, sc.addr)
		if err != nil {
			return stop, err
		}
		stops = append(stops, rr)
	}
	return stop, nil
}

// measureScenario takes one figure of every metric for sc, once its path works.
func measureScenario(ctx context.Context, twillBin string, sc dpScenario, d time.Duration, samples dpSamples) error {
	if err := waitReachable(ctx, twillBin, sc.client, sc.addr, time.Minute); err != nil {
		return err
	}
	gbps, err := runIperf3(ctx, sc.client, sc.addr, d)
	if err != nil {
		return err
	}
	samples.add(sc.key, metricThroughput, gbps)
	rr, err := runRRClient(ctx, twillBin, sc.client, sc.addr, false, d)
	if err != nil {
		return err
	}
	samples.add(sc.key, metricRR, rr)
	crr, err := runRRClient(ctx, twillBin, sc.client, sc.addr, true, d)
	if err != nil {
		return err
	}
	samples.add(sc.key, metricCRR, crr)
	return nil
}
