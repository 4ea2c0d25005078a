package connectivity

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/twill-net/twill/internal/netcheck"
)

// Exit codes of `twill netcheck connect` (see its --help).
const (
	exitTimeout     = 2
	exitRefused     = 3
	exitUnreachable = 4
	exitNotFound    = 5 // resolve only
)

// scenarios runs the catalogue. Scenarios that need what the cluster lacks (a second node,
// cluster DNS) are reported as skipped, with the reason. ClusterIP and NodePort Services need
// kube-proxy (or a replacement) on the nodes.
func (r *run) scenarios(ctx context.Context) {
	client := r.client
	for i, server := range r.servers {
		where := "same node"
		if i > 0 {
			where = "to " + server.Spec.NodeName
		}
		for _, proto := range []string{netcheck.TCP, netcheck.UDP, netcheck.HTTP} {
			port := podPort + map[string]int{netcheck.TCP: 0, netcheck.UDP: 1, netcheck.HTTP: 2}[proto]
			// Pod to pod keeps the client's address: no masquerading inside the cluster.
			r.expect(ctx, fmt.Sprintf("pod to pod, %s (%s)", where, proto), client, proto,
				hostPortOf(server.Status.PodIP, port), client.Status.PodIP)
		}
		// The largest packet the pod's interface allows gets through whole (the pod MTU
		// leaves room for any encapsulation on the way).
		r.expect(ctx, fmt.Sprintf("pod to pod, %s (udp, full MTU)", where), client, netcheck.UDP+"+mtu",
			hostPortOf(server.Status.PodIP, podPort+1), client.Status.PodIP)
		host := r.hosts[0]
		r.expect(ctx, fmt.Sprintf("node to pod, %s (tcp)", where), host, netcheck.TCP,
			hostPortOf(server.Status.PodIP, podPort), "")
		r.expect(ctx, fmt.Sprintf("pod to node, %s (tcp)", where), client, netcheck.TCP,
			hostPortOf(r.hosts[i].Status.HostIP, hostPort), "")
		r.expect(ctx, fmt.Sprintf("pod to node, %s (udp)", where), client, netcheck.UDP,
			hostPortOf(r.hosts[i].Status.HostIP, hostPort+1), "")
		r.expect(ctx, fmt.Sprintf("pod to hostPort, %s (tcp)", where), client, netcheck.TCP,
			hostPortOf(server.Status.HostIP, mappedPort), "")
		r.expect(ctx, fmt.Sprintf("pod to hostPort, %s (udp)", where), client, netcheck.UDP,
			hostPortOf(server.Status.HostIP, mappedPort+1), "")
		r.expectClusterIP(ctx, fmt.Sprintf("pod to ClusterIP Service, %s (tcp)", where), server)
	}
	if len(r.servers) == 1 {
		r.add(Result{Scenario: "pod to pod, across nodes", Skipped: true, Detail: "a single schedulable node"})
	}
	r.nodePortScenarios(ctx)
	r.dnsScenarios(ctx)
	r.loadBalancerScenarios(ctx)
	r.externalIPScenarios(ctx)
	r.affinityScenarios(ctx)
	r.trafficPolicyScenarios(ctx)
	r.hairpinScenario(ctx)
	r.noEndpointsScenario(ctx)
	r.headlessScenarios(ctx)
	// A port nobody listens on is refused, not silently dropped: the path answers.
	last := r.servers[len(r.servers)-1]
	r.expectRefused(ctx, fmt.Sprintf("closed port refused, %s", last.Spec.NodeName), client, hostPortOf(last.Status.PodIP, podPort+10))
}

func hostPortOf(ip string, port int) string { return net.JoinHostPort(ip, strconv.Itoa(port)) }

// expect probes addr from pod and passes when the server answers; when wantClientIP is set,
// the server must have seen that address.
func (r *run) expect(ctx context.Context, scenario string, from *corev1.Pod, proto, addr, wantClientIP string) {
	start := time.Now()
	res := r.probe(ctx, from, proto, addr)
	out := Result{Scenario: scenario, Took: time.Since(start)}
	switch {
	case res.code != 0:
		out.Detail = fmt.Sprintf("%s from %s to %s: %s", proto, from.Name, addr, res.describe())
	case wantClientIP != "" && res.clientIP() != wantClientIP:
		out.Detail = fmt.Sprintf("server saw client %s, want %s (source rewritten)", res.reply.Client, wantClientIP)
	default:
		out.OK, out.Detail = true, fmt.Sprintf("%s -> %s (%s)", from.Name, res.reply.Pod, addr)
		if res.reply.Bytes > 0 && strings.HasSuffix(proto, "+mtu") {
			out.Detail += fmt.Sprintf(", %d-byte datagram", res.reply.Bytes)
		}
	}
	r.add(out)
}

func (r *run) expectRefused(ctx context.Context, scenario string, from *corev1.Pod, addr string) {
	start := time.Now()
	res := r.probe(ctx, from, netcheck.TCP, addr)
	out := Result{Scenario: scenario, Took: time.Since(start), OK: res.code == exitRefused,
		Detail: fmt.Sprintf("tcp %s from %s: %s", addr, from.Name, res.describe())}
	r.add(out)
}

func (r *run) add(res Result) {
	r.results = append(r.results, res)
	r.report(res)
}

// probeResult is one `twill netcheck connect` run in a pod.
type probeResult struct {
	code   int // the prober's exit code; -1 when exec itself failed
	reply  netcheck.Reply
	stderr string
	err    error
}

func (p probeResult) describe() string {
	switch p.code {
	case 0:
		return "answered"
	case exitTimeout:
		return "timed out"
	case exitRefused:
		return "refused"
	case exitUnreachable:
		return "unreachable"
	case exitNotFound:
		return "name not found"
	case -1:
		return "exec failed: " + p.err.Error()
	}
	return fmt.Sprintf("exit code %d: %s", p.code, p.stderr)
}

func (p probeResult) clientIP() string {
	host, _, err := net.SplitHostPort(p.reply.Client)
	if err != nil {
		return p.reply.Client
	}
	return host
}

func (r *run) probe(ctx context.Context, pod *corev1.Pod, proto, addr string) probeResult {
	return r.probeFor(ctx, pod, proto, addr, r.cfg.Timeout)
}

// probeFor is probe with its own timeout (shorter where the scenario expects no answer).
func (r *run) probeFor(ctx context.Context, pod *corev1.Pod, proto, addr string, timeout time.Duration) probeResult {
	argv := connectArgv(proto, addr, timeout)
	stdout, stderr, code, err := r.exec(ctx, pod, argv)
	res := probeResult{code: code, stderr: stderr, err: err}
	if code == 0 {
		if res.reply, err = netcheck.ParseReply(trimLine(stdout)); err != nil {
			res.code, res.err = -1, err
		}
	}
	return res
}

// connectArgv runs `twill netcheck connect` (proto "udp+mtu": UDP datagrams filling the MTU).
func connectArgv(proto, addr string, timeout time.Duration) []string {
	argv := []string{"/twill", "netcheck", "connect", addr, "--protocol", proto, "--timeout", timeout.String()}
	if proto == netcheck.UDP+"+mtu" {
		argv[5] = netcheck.UDP
		argv = append(argv, "--fill-mtu")
	}
	return argv
}

func trimLine(s string) string {
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == '\r') {
		s = s[:len(s)-1]
	}
	return s
}
