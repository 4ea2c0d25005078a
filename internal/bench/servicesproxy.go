package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/twill-net/twill/internal/datapath/nftsvc"
	"github.com/twill-net/twill/internal/lab/cluster"
	"github.com/twill-net/twill/internal/lab/kubenode"
	"github.com/twill-net/twill/internal/lab/underlay"
)

// How the services suite runs each proxy on the lab's node, and what it measures of it.

// proxyEnv is what running a proxy needs.
type proxyEnv struct {
	lab                               *cluster.Cluster
	node                              *cluster.Node
	client                            *cluster.Pod
	dir, name                         string
	kubeProxyBin, kubeProxyKubeconfig string
	twillBin                          string
	// direct is a server pod's own address: the connect rate's reference (servicescrr.go).
	direct netip.AddrPort
}

// runningProxy is a started proxy.
type runningProxy struct {
	// started is when the proxy's process was started: the full sync is timed from there,
	// not from the stop of whatever ran before it (twill's agent without --services).
	started time.Time
	stop    func() error
	clean   func(ctx context.Context) error
}

// svcResult is one proxy at one scale.
type svcResult struct {
	proxy  string
	scale  int
	resync time.Duration
	// syncTimedOut says the full sync did not end within the timeout (resync is then a lower
	// bound, and nothing else was measured).
	syncTimedOut bool
	// crr is new connections per second to one ClusterIP; connectP50/P99 the time connect()
	// took, in microseconds: the medians of the rounds in rounds.
	crr, connectP50, connectP99 float64
	rounds                      crrFigures
	// crrLoad is the machine's load averages when the rounds ended (machineLoad).
	crrLoad string
	// adds are the single additions' times to programmed; addWrites the part of each that
	// was the API write (until the apiserver answered).
	adds, addWrites []time.Duration
	// proxyRSS is the VmRSS (MiB) of what serves the services: kube-proxy, or twill's agent
	// with --services; agentRSS is the agent's, which beside kube-proxy runs without.
	proxyRSS, agentRSS float64
	// ownProgramming is the mean of the proxy's own programming histogram over the additions
	// (servicesmetrics.go), ownCount how many observations it made meanwhile, ownP99Bound the
	// upper bound of the bucket holding their 99th percentile (+Inf: past the last bucket).
	ownProgramming time.Duration
	ownCount       int
	ownP99Bound    float64
}

// measureProxy starts the proxy with the world's services present (and none of its rules in
// the kernel), times its first full sync, measures, then stops it and cleans its rules.
func measureProxy(ctx context.Context, env *proxyEnv, world *serviceWorld, proxy string, opts ServicesOptions, say func(string, ...any)) (res svcResult, err error) {
	res.proxy = proxy
	p, err := env.start(ctx, proxy)
	if err != nil {
		return res, err
	}
	start := p.started
	var added []string
	defer func() {
		// Stopped before the additions are deleted: those deletions are nobody's to program.
		err = errors.Join(err, p.stop())
		for _, name := range added {
			err = errors.Join(err, world.remove(context.WithoutCancel(ctx), name))
		}
		err = errors.Join(err, p.clean(context.WithoutCancel(ctx)))
	}()
	syncCtx, cancel := context.WithTimeout(ctx, opts.SyncTimeout)
	defer cancel()
	if err := waitConnect(syncCtx, env.client.Sandbox, world.samples()); err != nil {
		if ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
			return res, fmt.Errorf("waiting for the first full sync: %w", err)
		}
		res.resync, res.syncTimedOut = time.Since(start), true
		say("%s: no full sync of %d services after %s: its other figures are not taken at this scale", proxy, world.count(), res.resync.Round(time.Second))
		return res, nil
	}
	res.resync = time.Since(start)
	say("%s: full sync of %d services in %s", proxy, world.count(), res.resync.Round(time.Millisecond))

	target := netip.AddrPortFrom(world.ips[len(world.ips)-1], servicePort)
	rounds, err := measureConnectRounds(ctx, env, target, opts)
	if err != nil {
		return res, err
	}
	res.rounds, res.crrLoad = rounds, machineLoad()
	res.crr, res.connectP50, res.connectP99 = median(rounds.service), median(rounds.p50s), median(rounds.p99s)
	say("%s: %.0f new connections/s to a ClusterIP, %s; to the pod directly %.0f, %s; connect p50 %.0f µs p99 %.0f µs",
		proxy, res.crr, describeRounds(rounds.service), median(rounds.direct), describeRounds(rounds.direct), res.connectP50, res.connectP99)

	url, metric := proxyMetric(proxy)
	before, beforeErr := scrapeHistogramRetrying(ctx, env.node.Node, url, metric)
	addStart := time.Now()
	for i := range opts.Adds {
		if i >= serviceMinAdds && time.Since(addStart) > serviceAddBudget {
			say("%s: %d additions took %s: no more at this scale", proxy, i, time.Since(addStart).Round(time.Second))
			break
		}
		name := fmt.Sprintf("bsvc-add-%s-%d", strings.ReplaceAll(proxy, "-", ""), i)
		took, write, err := addOneService(ctx, env, world, name, &added)
		if err != nil {
			return res, fmt.Errorf("adding service %s: %w", name, err)
		}
		res.adds, res.addWrites = append(res.adds, took), append(res.addWrites, write)
	}
	after, afterErr := scrapeHistogramRetrying(ctx, env.node.Node, url, metric)
	if err := errors.Join(beforeErr, afterErr); err != nil {
		// The proxy's own figure is a complement to the one measured from outside: its
		// absence is said, not fatal.
		say("%s: no figure of its own (%v)", proxy, err)
		res.ownCount = -1
	} else {
		res.ownProgramming = time.Duration(after.meanSince(before) * float64(time.Second))
		res.ownCount = int(after.count - before.count)
		res.ownP99Bound = after.quantileBoundSince(before, 0.99)
	}
	say("%s: %d services added one at a time, programmed p50 %s, max %s; its own %s: mean %s, p99 at most %gs, over %d",
		proxy, len(res.adds), Percentile(res.adds, 50).Round(10*time.Microsecond),
		Percentile(res.adds, 100).Round(10*time.Microsecond), metric, res.ownProgramming.Round(10*time.Microsecond), res.ownP99Bound, res.ownCount)

	rss, _, err := sampleRSS(env.dir, env.name)
	if err != nil {
		return res, err
	}
	agent := rss[compAgent]
	if len(agent) > 0 {
		res.agentRSS = agent[0]
	}
	if proxy == ProxyTwill {
		res.proxyRSS = res.agentRSS
	} else if kp := rss[compKubeProxy]; len(kp) > 0 {
		res.proxyRSS = kp[0]
	}
	return res, nil
}

// addOneService writes an EndpointSlice, waits, then writes its Service and returns the time
// from just before that write until a connection from the client pod to the new ClusterIP
// succeeds. The slice goes first, and on its own, so that the one change timed is the
// Service's, meeting an idle proxy: the pause after the slice outlasts kube-proxy's default
// minimum sync interval (1 s), which would otherwise hold back the second of two writes in a
// row; the pause before it lets the previous addition's work end.
// write is how long the API write itself took (until its answer), part of took.
func addOneService(ctx context.Context, env *proxyEnv, world *serviceWorld, name string, added *[]string) (took, write time.Duration, err error) {
	if err := pauseCtx(ctx, serviceAddGap-serviceSliceLead); err != nil {
		return 0, 0, err
	}
	*added = append(*added, name)
	ctx, cancel := context.WithTimeout(ctx, serviceAddTimeout)
	defer cancel()
	if err := world.createSlice(ctx, name); err != nil {
		return 0, 0, err
	}
	if err := pauseCtx(ctx, serviceSliceLead); err != nil {
		return 0, 0, err
	}
	t0 := time.Now()
	ip, err := world.createService(ctx, name)
	if err != nil {
		return 0, 0, err
	}
	write = time.Since(t0)
	if err := waitConnect(ctx, env.client.Sandbox, []netip.AddrPort{netip.AddrPortFrom(ip, servicePort)}); err != nil {
		return 0, 0, err
	}
	return time.Since(t0), write, nil
}

// start starts the named proxy on the node.
func (env *proxyEnv) start(ctx context.Context, proxy string) (*runningProxy, error) {
	switch proxy {
	case ProxyTwill:
		return env.startTwill(ctx)
	case ProxyKubeProxyIPTables:
		return env.startKubeProxy(kubenode.KubeProxyIPTables)
	case ProxyKubeProxyNFTables:
		return env.startKubeProxy(kubenode.KubeProxyNFTables)
	}
	return nil, fmt.Errorf("no proxy %q", proxy)
}

// startTwill restarts the node's agent with --services; stopping restarts it without, after
// removing its services table (the agent leaves it on exit: a restarted agent keeps serving
// from it until its first apply replaces it).
func (env *proxyEnv) startTwill(ctx context.Context) (*runningProxy, error) {
	n := env.node
	if err := n.StopAgent(); err != nil {
		return nil, err
	}
	n.ExtraArgs = []string{"--services"}
	started := time.Now()
	if err := n.StartAgent(); err != nil {
		return nil, err
	}
	restart := func(ctx context.Context, args ...string) error {
		if err := n.StopAgent(); err != nil {
			return err
		}
		n.ExtraArgs = args
		if err := n.StartAgent(); err != nil {
			return err
		}
		return n.WaitReady(ctx)
	}
	return &runningProxy{
		started: started,
		stop:    func() error { return n.StopAgent() },
		clean: func(ctx context.Context) error {
			err := deleteNFTTable(ctx, n.Node, string(nftsvc.TableFamily), nftsvc.TableName)
			return errors.Join(err, restart(ctx))
		},
	}, nil
}

// startKubeProxy runs the upstream kube-proxy in the node's network namespace with the lab's
// configuration in the given mode.
func (env *proxyEnv) startKubeProxy(mode string) (*runningProxy, error) {
	conf, err := json.MarshalIndent(kubenode.KubeProxyConfig(env.node.Name, env.kubeProxyKubeconfig, mode), "", "  ")
	if err != nil {
		return nil, err
	}
	confFile := filepath.Join(env.dir, "kube-proxy-"+mode+".json")
	if err := os.WriteFile(confFile, conf, 0o644); err != nil {
		return nil, err
	}
	logPath := filepath.Join(env.dir, "kube-proxy-"+mode+".log")
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd := env.node.Command(context.Background(), env.kubeProxyBin, "--config="+confFile, "--v=1")
	cmd.Stdout, cmd.Stderr = log, log
	started := time.Now()
	if err := underlay.StartCommand(cmd); err != nil {
		return nil, fmt.Errorf("starting kube-proxy (%s): %w", mode, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	return &runningProxy{
		started: started,
		stop: func() error {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
			return nil
		},
		clean: func(ctx context.Context) error {
			out, err := env.node.Command(ctx, env.kubeProxyBin, "--cleanup", "--v=1").CombinedOutput()
			if err != nil {
				return fmt.Errorf("kube-proxy --cleanup: %w: %s (log of the run: %s)", err, tailString(string(out), 5), logPath)
			}
			return nil
		},
	}, nil
}

// deleteNFTTable removes an nftables table in ns, if it is there.
func deleteNFTTable(ctx context.Context, ns *underlay.Node, family, table string) error {
	out, err := ns.Command(ctx, "nft", "delete", "table", family, table).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "No such file") {
		return fmt.Errorf("nft delete table %s %s: %w: %s", family, table, err, out)
	}
	return nil
}

// pauseCtx waits d, or less when ctx ends first (then its error).
func pauseCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func tailString(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// waitConnect connects from ns to each target in turn and returns when a connection to every
// one has succeeded. It starts a new connection attempt every millisecond without waiting for
// the earlier ones: before the proxy has the target, a SYN may be answered with an ICMP error
// or silently dropped, and a dropped SYN is retransmitted only after a second, through the
// conntrack entry that saw it untranslated, so it never succeeds. Attempts older than
// connectAttemptTTL are closed; the first that completes ends the wait. Non-blocking sockets
// polled from one thread keep the namespace switch to one and the probe's own load small.
func waitConnect(ctx context.Context, ns *underlay.Node, targets []netip.AddrPort) error {
	return ns.Do(func() error {
		for _, t := range targets {
			if err := connectOnce(ctx, t); err != nil {
				return err
			}
		}
		return nil
	})
}

const (
	connectAttemptEvery = time.Millisecond
	connectAttemptTTL   = 200 * time.Millisecond
)

// connectAttempt is one non-blocking connect in flight.
type connectAttempt struct {
	fd      int
	started time.Time
}

// connectOnce runs on the thread of the namespace the connections are made from.
func connectOnce(ctx context.Context, t netip.AddrPort) error {
	if !t.Addr().Is4() {
		return fmt.Errorf("%s: the probe connects to IPv4 addresses only", t)
	}
	sa := &unix.SockaddrInet4{Port: int(t.Port()), Addr: t.Addr().As4()}
	var inFlight []connectAttempt
	defer func() {
		for _, a := range inFlight {
			_ = unix.Close(a.fd)
		}
	}()
	var last error
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("no connection to %s: %w (last: %v)", t, err, last)
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		// Closing with a reset leaves no TIME_WAIT socket behind.
		_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		switch err := unix.Connect(fd, sa); {
		case err == nil:
			_ = unix.Close(fd)
			return nil
		case errors.Is(err, unix.EINPROGRESS):
			inFlight = append(inFlight, connectAttempt{fd: fd, started: time.Now()})
		default:
			last = err
			_ = unix.Close(fd)
		}
		fds := make([]unix.PollFd, len(inFlight))
		for i, a := range inFlight {
			fds[i] = unix.PollFd{Fd: int32(a.fd), Events: unix.POLLOUT}
		}
		if _, err := unix.Poll(fds, int(connectAttemptEvery/time.Millisecond)); err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("poll: %w", err)
		}
		var kept []connectAttempt
		for i, a := range inFlight {
			if fds[i].Revents == 0 {
				if time.Since(a.started) < connectAttemptTTL {
					kept = append(kept, a)
				} else {
					_ = unix.Close(a.fd)
				}
				continue
			}
			soErr, err := unix.GetsockoptInt(a.fd, unix.SOL_SOCKET, unix.SO_ERROR)
			if err == nil && soErr == 0 {
				// Done: close this one and every other still open (not yet looked at, or kept).
				for _, b := range append(kept, inFlight[i:]...) {
					_ = unix.Close(b.fd)
				}
				inFlight = nil
				return nil
			}
			last = errors.Join(err, syscall.Errno(soErr))
			_ = unix.Close(a.fd)
		}
		inFlight = kept
		if len(inFlight) == 0 {
			time.Sleep(connectAttemptEvery)
		}
	}
}
