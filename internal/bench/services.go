package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"

	"github.com/twill-net/twill/internal/lab/cluster"
)

// The services suite compares twill's service proxy (the agent with --services: nftables
// table inet twill-services) with the upstream kube-proxy, built from the same pinned version
// as the lab's control plane, in iptables and in nftables mode, side by side in one run, at
// 1,000, 10,000 and 50,000 Services of two endpoints each. For each proxy and scale it reports:
//
//   - full resync: the proxy started with N services present and none of its rules in the
//     kernel (its rules cleaned after the previous proxy, as after a node reboot), from the
//     process start until a sample of the services (the first, the last and six spread between)
//     each answers a TCP connect from a pod: the whole of what a restart costs (the API list,
//     the computation, the kernel write), measured from outside the proxy. A sync that takes
//     longer than SyncTimeout (5 min; kube-proxy's iptables mode needs minutes at 10,000
//     here) is reported as a lower bound and the proxy's other figures at that scale skipped,
//     so the full run stays within about 45 minutes;
//   - a service added when N exist: from just before the Service is written to the API until
//     a connect from the client pod to the new ClusterIP succeeds, a new attempt every
//     millisecond (its EndpointSlice was written 1.5 s before, so the one change timed is the
//     Service's and meets an idle proxy: kube-proxy's default minSyncPeriod of 1 s would
//     otherwise hold back the second of two writes in a row); additions are 2.5 s apart, 20
//     per proxy and scale, fewer (at least 5) when they take over 2 minutes. The API write's
//     own time is reported beside it, and the time from its answer to the connection (the
//     apiserver's own time per Service grows with the number of services: see
//     servicesworld.go). Beside this outside measure, each proxy's own: the mean and the p99
//     bucket of kube-proxy's kubeproxy_sync_proxy_rules_duration_seconds and of the agent's
//     twill_services_programming_seconds (change received to applied) over the additions;
//   - the new-connection rate (TCP_CRR, `twill bench rr-client` with one thread) from a pod to
//     one ClusterIP, and the time connect() took (p50, p99): the first packet's path through
//     the service translation and back; the median of several short rounds, each followed by
//     one to a server pod directly, the machine's reference (servicescrr.go);
//   - the resident memory (VmRSS) of the proxy, and of the twill agent (which runs on the node
//     in every case, because it also wires the pods: without --services beside kube-proxy).
//
// Why this shape: creating 50,000 Services and EndpointSlices through the API is the slow
// part (tens of minutes on two cores: see servicesworld.go), so they are created once per
// run by parallel clients (the control plane's priority raised meanwhile) and
// reused by every proxy: the scales run in ascending order, each adding services to the last,
// and the proxies run one after another on the same services, each stopped and its rules
// cleaned (`kube-proxy --cleanup`; deleting twill's table) before the next starts. The
// services are selectorless, each with one EndpointSlice of two endpoints: two real server
// pods (`twill bench rr-server`), so connections really go somewhere. The lab is the cluster
// package's (control plane, one node with its twill agent, pods wired by twill-cni through
// libcni): no kubelet or containerd, which would only add load to the machine that measures.
//
// twill's figures are reported as ratios to kube-proxy nftables (the baseline column), with a
// second row against kube-proxy iptables; the connect rate at the largest scale is reported as
// a ratio to the same proxy's rate at the smallest. Targets (twill): the connect rate drops at
// most 5% from 1,000 to 50,000 services; an added service at 50,000 is programmed in at most
// 10 ms p99; a full resync of 10,000 services takes at most 2 s.

// The proxies the suite compares.
const (
	ProxyKubeProxyIPTables = "kube-proxy-iptables"
	ProxyKubeProxyNFTables = "kube-proxy-nftables"
	ProxyTwill             = "twill"
)

// AllServiceProxies are the proxies in the order they run at each scale.
var AllServiceProxies = []string{ProxyKubeProxyIPTables, ProxyKubeProxyNFTables, ProxyTwill}

// DefaultServiceScales are the numbers of services measured.
var DefaultServiceScales = []int{1000, 10000, 50000}

// ServicesOptions configure the services suite.
type ServicesOptions struct {
	// Scales are the numbers of services (default DefaultServiceScales), measured in
	// ascending order.
	Scales []int
	// Proxies are the proxies measured (default AllServiceProxies), always run in that order.
	Proxies []string
	// Adds is how many single services are added per scale and proxy (default 20).
	Adds int
	// Duration of each round of the connect-rate figure (default 2s).
	Duration time.Duration
	// Rounds of the connect-rate figure (default DefaultServiceRounds; see servicescrr.go).
	Rounds int
	// SyncTimeout bounds each full sync (default DefaultServiceSyncTimeout).
	SyncTimeout time.Duration
	// TwillBin and UpstreamBin: as in ScaleOptions (UpstreamBin must hold kube-proxy).
	TwillBin, UpstreamBin string
	Progress              io.Writer
}

// Defaults of ServicesOptions.
const (
	DefaultServiceAdds     = 20
	DefaultServiceDuration = 2 * time.Second
	// serviceAddGap spaces the single additions (see the suite's comment).
	serviceAddGap = 2500 * time.Millisecond
	// serviceSliceLead is how long before its Service an added service's EndpointSlice is
	// written (see addOneService).
	serviceSliceLead = 1500 * time.Millisecond
	// DefaultServiceSyncTimeout bounds a proxy's full sync: one slower than that (kube-proxy's
	// iptables mode takes minutes at 10,000 services here) is reported as "more than", and the
	// proxy's other figures at that scale are not taken, so the whole run keeps to its time.
	DefaultServiceSyncTimeout = 5 * time.Minute
	// serviceAddBudget bounds the additions of one proxy at one scale: past it, and past
	// serviceMinAdds, no more are made (a proxy that takes seconds per change would otherwise
	// hold the run for many minutes). serviceAddTimeout bounds one addition.
	serviceAddBudget  = 2 * time.Minute
	serviceMinAdds    = 5
	serviceAddTimeout = time.Minute
)

func runServicesSuite(ctx context.Context, opts Options) (Report, error) {
	return RunServices(ctx, ServicesOptions{Scales: opts.ServiceScales, Proxies: opts.ServiceProxies,
		Adds: opts.Iterations, Progress: opts.Progress})
}

func (o *ServicesOptions) validate() error {
	if len(o.Scales) == 0 {
		o.Scales = DefaultServiceScales
	}
	o.Scales = slices.Clone(o.Scales)
	slices.Sort(o.Scales)
	o.Scales = slices.Compact(o.Scales)
	if o.Scales[0] < 1 || o.Scales[len(o.Scales)-1] > 60000 {
		return fmt.Errorf("services scales %v: want 1 to 60,000 (the lab's service range is a /16)", o.Scales)
	}
	if len(o.Proxies) == 0 {
		o.Proxies = AllServiceProxies
	}
	var proxies []string
	for _, p := range AllServiceProxies {
		if slices.Contains(o.Proxies, p) {
			proxies = append(proxies, p)
		}
	}
	for _, p := range o.Proxies {
		if !slices.Contains(AllServiceProxies, p) {
			return fmt.Errorf("services proxy %q: want %s", p, strings.Join(AllServiceProxies, ", "))
		}
	}
	o.Proxies = proxies
	if o.Adds <= 0 {
		o.Adds = DefaultServiceAdds
	}
	if o.Duration <= 0 {
		o.Duration = DefaultServiceDuration
	}
	if o.Rounds <= 0 {
		o.Rounds = DefaultServiceRounds
	}
	if o.SyncTimeout <= 0 {
		o.SyncTimeout = DefaultServiceSyncTimeout
	}
	if slices.Contains(o.Proxies, ProxyKubeProxyIPTables) {
		for _, prog := range []string{"iptables", "iptables-save", "iptables-restore"} {
			if _, err := exec.LookPath(prog); err != nil {
				return fmt.Errorf("kube-proxy's iptables mode needs Debian's iptables (apt-get install iptables, or hack/setup.sh): %w", err)
			}
		}
	}
	if _, err := exec.LookPath("nft"); err != nil {
		return fmt.Errorf("the services suite needs nft (apt-get install nftables): %w", err)
	}
	return nil
}

// RunServices builds its lab (control plane, one node, three pods), creates the services
// scale by scale, measures every proxy at every scale, removes everything and returns the
// report.
func RunServices(ctx context.Context, opts ServicesOptions) (rep Report, err error) {
	if err := opts.validate(); err != nil {
		return rep, err
	}
	progress := opts.Progress
	if progress == nil {
		progress = io.Discard
	}
	say := func(format string, args ...any) { fmt.Fprintf(progress, "bench services: "+format+"\n", args...) }
	run, err := prepareLabRun(ctx, opts.TwillBin, opts.UpstreamBin, "services", datapathLabName, "etcd", "kube-apiserver", "kube-proxy")
	if err != nil {
		return rep, err
	}
	twillBin, cniDir, dir, name := run.twillBin, run.cniDir, run.dir, run.name
	opts.UpstreamBin = run.upstreamBin
	cleanupCtx := context.WithoutCancel(ctx)
	defer run.keepLogsOnFailure(&err, say)

	say("starting a one-node lab cluster %s (etcd, kube-apiserver, twill agent without --services)", name)
	lab, err := cluster.Start(ctx, cluster.Options{
		Name: name, Dir: dir, UpstreamBin: opts.UpstreamBin, TwillBin: twillBin, CNIBin: cniDir,
		Nodes:     []cluster.NodeSpec{{Name: "n1"}},
		AgentArgs: []string{"--routing", routingNative, "--services=false"},
		Log:       slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return rep, fmt.Errorf("starting the lab cluster: %w", err)
	}
	defer func() { err = errors.Join(err, lab.Close()) }()
	node := lab.Node("n1")

	var pods []*cluster.Pod
	defer func() {
		for _, p := range pods {
			err = errors.Join(err, lab.Remove(cleanupCtx, p))
		}
	}()
	for _, podName := range []string{"svc-server-a", "svc-server-b", "svc-client"} {
		p, err := lab.AddPodWith(ctx, node, cluster.PodOptions{Name: podName})
		if err != nil {
			return rep, err
		}
		if !p.IPv4().IsValid() {
			return rep, fmt.Errorf("pod %s has no IPv4 address", podName)
		}
		pods = append(pods, p)
	}
	servers, client := pods[:2], pods[2]
	for _, s := range servers {
		stop, err := startRRServer(twillBin, s.Sandbox, s.IPv4())
		if err != nil {
			return rep, err
		}
		defer stop()
	}
	for _, s := range servers {
		if err := waitReachable(ctx, twillBin, client.Sandbox, s.IPv4(), time.Minute); err != nil {
			return rep, err
		}
	}
	// A connect to a ClusterIP no proxy serves yet must fail at once (the node answers with
	// ICMP unreachable: it has no route to the service range), not after a SYN retransmit:
	// the kernel's rate limit on ICMP errors would otherwise drop most of those answers.
	if err := node.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/icmp_ratelimit", []byte("0"), 0o644)
	}); err != nil {
		return rep, fmt.Errorf("lifting the node's ICMP rate limit: %w", err)
	}

	kube, err := servicesClient(lab)
	if err != nil {
		return rep, err
	}
	world := &serviceWorld{kube: kube, namespace: cluster.PodNamespace,
		endpoints: []string{servers[0].IPv4().String(), servers[1].IPv4().String()}, port: rrPort,
		pool: bulkClusterIPs(lab.CP.ServiceCIDR())}
	kubeProxyKubeconfig := filepath.Join(dir, "kube-proxy.kubeconfig")
	if err := lab.CP.WriteKubeconfigFor(kubeProxyKubeconfig, "system:kube-proxy"); err != nil {
		return rep, err
	}
	env := &proxyEnv{lab: lab, node: node, client: client, dir: dir, name: name,
		kubeProxyBin: filepath.Join(opts.UpstreamBin, "kube-proxy"), kubeProxyKubeconfig: kubeProxyKubeconfig,
		twillBin: twillBin, direct: netip.AddrPortFrom(servers[0].IPv4(), rrPort)}

	var results []svcResult
	cond := svcConditions{cores: runtime.NumCPU(), duration: opts.Duration, rounds: opts.Rounds, syncTimeout: opts.SyncTimeout}
	// A failure ends the run, but what was measured before it is reported with the error.
	partial := func(err error) (Report, error) {
		cond.load = machineLoad()
		return Report{Suite: "services", Measurements: servicesMeasurements(results, cond)}, err
	}
	for _, scale := range opts.Scales {
		start := time.Now()
		say("creating services up to %d (two endpoints each, ClusterIPs requested, %d parallel clients, protobuf)", scale, serviceWorkers)
		before := world.count()
		cpuBefore, _ := sampleCPU(dir, name)
		if err := setControlPlaneNice(dir, name, controlPlaneNice); err != nil {
			say("the control plane keeps its priority: %v", err)
		}
		growErr := world.grow(ctx, scale, say)
		if err := setControlPlaneNice(dir, name, 0); err != nil && growErr == nil {
			return partial(err)
		}
		if growErr != nil {
			return partial(growErr)
		}
		took := time.Since(start)
		cpuAfter, _ := sampleCPU(dir, name)
		cond.creations = append(cond.creations, svcCreation{from: before, to: world.count(), took: took,
			cpu: cpuAfter.describeSince(cpuBefore, took)})
		say("%d services exist (this step took %s: %.0f services/s, each a Service and an EndpointSlice; %s; %s)",
			world.count(), took.Round(time.Second), float64(world.count()-before)/took.Seconds(),
			cpuAfter.describeSince(cpuBefore, took), machineLoad())
		for _, proxy := range opts.Proxies {
			say("%s at %d services", proxy, scale)
			res, err := measureProxy(ctx, env, world, proxy, opts, say)
			if err != nil {
				return partial(fmt.Errorf("%s at %d services: %w", proxy, scale, err))
			}
			res.scale = scale
			results = append(results, res)
		}
	}
	return partial(nil)
}

// servicesClient is an admin client without client-go's default rate limit (5 per second),
// which would make creating 100,000 objects take hours, speaking protobuf as the cluster's
// own components do (cheaper to decode than JSON, though a small part of the apiserver's
// cost per service here: see servicesworld.go).
func servicesClient(lab *cluster.Cluster) (kubernetes.Interface, error) {
	cfg := lab.CP.RESTConfig()
	cfg.QPS, cfg.Burst = 5000, 10000
	cfg.ContentType = kruntime.ContentTypeProtobuf
	cfg.AcceptContentTypes = kruntime.ContentTypeProtobuf + "," + kruntime.ContentTypeJSON
	return kubernetes.NewForConfig(cfg)
}
