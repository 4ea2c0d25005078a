// Package connectivity is `twill connectivity test`: a catalogue of checks run against a live
// cluster (the lab, or any cluster reachable by a kubeconfig) through its API only. It places
// netcheck pods (the workload image running `twill netcheck serve`) on chosen nodes, some in the
// node's network (hostNetwork), then runs `twill netcheck connect` inside them through the API's
// exec, as kubectl exec does, and reads the prober's exit code and the address the server saw.
package connectivity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Defaults of a run.
const (
	DefaultNamespace = "twill-connectivity"
	DefaultImage     = "registry.twill.local/twill:dev"
	// Pod servers listen on podPort (TCP), +1 (UDP), +2 (HTTP); servers in a node's network on
	// hostPort.., chosen away from what nodes usually listen on.
	podPort  = 8080
	hostPort = 19080
	// Server pods also publish their TCP and UDP ports on their node at mappedPort, +1
	// (hostPort, through the portmap plugin chained after twill's).
	mappedPort = 19180
	// maxServerNodes bounds how many nodes get a server pod: enough to meet every kind of
	// path (same subnet, other subnet) without a pod on each node of a big cluster.
	maxServerNodes = 4
)

// Config describes a run.
type Config struct {
	Kube kubernetes.Interface
	// REST is the client configuration exec uses (the same as Kube's).
	REST *rest.Config
	// Namespace holds the test's pods; it is created, and deleted at the end.
	Namespace string
	// Image runs `twill netcheck`; pods use it with imagePullPolicy Never (the lab imports it
	// into every node).
	Image string
	// Timeout bounds each probe.
	Timeout time.Duration
	// LoadBalancerRange holds addresses nothing else in the cluster uses, routed to its nodes:
	// the test gives one to a LoadBalancer Service (writing the Service's status, as a load
	// balancer controller such as MetalLB would) and puts another in a Service's externalIPs.
	// Unset (a real cluster): the LoadBalancer scenarios wait for the cluster's own controller
	// to assign an address, and the externalIPs ones are skipped.
	LoadBalancerRange netip.Prefix
	Log               *slog.Logger
}

// Result is the outcome of one scenario.
type Result struct {
	Scenario string
	// OK says the scenario passed; Skipped that the cluster cannot run it (Detail says why).
	OK, Skipped bool
	Detail      string
	Took        time.Duration
}

// Failed counts the results that neither passed nor were skipped.
func Failed(results []Result) int {
	n := 0
	for _, r := range results {
		if !r.OK && !r.Skipped {
			n++
		}
	}
	return n
}

// Run sets the pods up, runs every scenario and removes the pods. report is called with each
// result as it comes (nil: none). The error is for a run that could not take place at all.
func Run(ctx context.Context, cfg Config, report func(Result)) ([]Result, error) {
	r := newRun(cfg, report)
	r.exec = r.execThroughAPI
	return r.execute(ctx)
}

func newRun(cfg Config, report func(Result)) *run {
	if cfg.Namespace == "" {
		cfg.Namespace = DefaultNamespace
	}
	if cfg.Image == "" {
		cfg.Image = DefaultImage
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 3 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if report == nil {
		report = func(Result) {}
	}
	return &run{cfg: cfg, report: report, serviceWait: defaultServiceWait, retryEvery: 500 * time.Millisecond,
		services: map[string]*corev1.Service{}}
}

func (r *run) execute(ctx context.Context) ([]Result, error) {
	nodes, err := r.schedulableNodes(ctx)
	if err != nil {
		return nil, err
	}
	if err := r.prepareNamespace(ctx); err != nil {
		return nil, err
	}
	defer r.cleanup()
	if err := r.startPods(ctx, nodes); err != nil {
		return nil, err
	}
	r.scenarios(ctx)
	return r.results, nil
}

type run struct {
	cfg     Config
	report  func(Result)
	results []Result
	// exec runs a program in a pod (execThroughAPI; tests replace it).
	exec func(ctx context.Context, pod *corev1.Pod, argv []string) (stdout, stderr string, code int, err error)
	// client runs on the first node; servers[i] and hosts[i] on node i.
	client         *corev1.Pod
	servers, hosts []*corev1.Pod
	// serviceWait is how long a new Service may take to work (tests shorten it).
	serviceWait time.Duration
	// retryEvery spaces the attempts of a probe (or an API read) repeated until it succeeds.
	retryEvery time.Duration
	// services are the ClusterIP Services made so far, by the name of the server they front.
	services map[string]*corev1.Service
}

func (r *run) schedulableNodes(ctx context.Context) ([]corev1.Node, error) {
	list, err := r.cfg.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing nodes: %w", err)
	}
	var out []corev1.Node
	for _, n := range list.Items {
		if n.Spec.Unschedulable {
			continue
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				out = append(out, n)
			}
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no Ready, schedulable node in the cluster")
	}
	return out, nil
}

// prepareNamespace creates the test's namespace, first waiting for an earlier run's to go.
func (r *run) prepareNamespace(ctx context.Context) error {
	namespaces := r.cfg.Kube.CoreV1().Namespaces()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		_, err := namespaces.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: r.cfg.Namespace}}, metav1.CreateOptions{})
		if err == nil {
			return nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating namespace %s: %w", r.cfg.Namespace, err)
		}
		// Left by an interrupted run: delete it and wait until it is gone.
		_ = namespaces.Delete(ctx, r.cfg.Namespace, metav1.DeleteOptions{})
		if time.Now().After(deadline) {
			return fmt.Errorf("namespace %s of an earlier run is still being deleted", r.cfg.Namespace)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// cleanup deletes the pods at once and the namespace (not waiting for it: the next run does).
func (r *run) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	zero := int64(0)
	_ = r.cfg.Kube.CoreV1().Pods(r.cfg.Namespace).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{})
	_ = r.cfg.Kube.CoreV1().Namespaces().Delete(ctx, r.cfg.Namespace, metav1.DeleteOptions{})
}

func (r *run) startPods(ctx context.Context, nodes []corev1.Node) error {
	if len(nodes) > maxServerNodes {
		nodes = nodes[:maxServerNodes]
	}
	var err error
	if r.client, err = r.createPod(ctx, "client", nodes[0].Name, false, podPort, false); err != nil {
		return err
	}
	for i, n := range nodes {
		s, err := r.createPod(ctx, "server-"+strconv.Itoa(i), n.Name, false, podPort, true)
		if err != nil {
			return err
		}
		h, err := r.createPod(ctx, "host-"+strconv.Itoa(i), n.Name, true, hostPort, false)
		if err != nil {
			return err
		}
		r.servers, r.hosts = append(r.servers, s), append(r.hosts, h)
	}
	all := append(append([]*corev1.Pod{r.client}, r.servers...), r.hosts...)
	for i, p := range all {
		ready, err := r.waitServing(ctx, p)
		if err != nil {
			return err
		}
		*all[i] = *ready
	}
	return nil
}

// createPod makes a netcheck pod serving on port..port+2; publish maps its ports on the node.
func (r *run) createPod(ctx context.Context, name, node string, hostNetwork bool, port int, publish bool) (*corev1.Pod, error) {
	zero := int64(0)
	labels := map[string]string{"app": "twill-connectivity", serverLabel: name}
	if publish {
		// The server pods (those that publish ports), which Services over several backends select.
		labels[roleLabel] = roleServer
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: r.cfg.Namespace, Labels: labels},
		Spec: corev1.PodSpec{
			// Placed by name, not by the scheduler: each scenario needs a given pair of nodes.
			NodeName:                      node,
			HostNetwork:                   hostNetwork,
			TerminationGracePeriodSeconds: &zero,
			Tolerations:                   []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{
				Name:            "netcheck",
				Image:           r.cfg.Image,
				ImagePullPolicy: corev1.PullNever,
				Command: []string{"/twill", "netcheck", "serve",
					"--tcp", strconv.Itoa(port), "--udp", strconv.Itoa(port + 1), "--http", strconv.Itoa(port + 2)},
				Ports: mappedPorts(publish),
				Env: []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{
					FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
			}},
		},
	}
	created, err := r.cfg.Kube.CoreV1().Pods(r.cfg.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating pod %s on %s: %w", name, node, err)
	}
	return created, nil
}

// mappedPorts publishes a server pod's TCP and UDP ports on its node (hostPort).
func mappedPorts(publish bool) []corev1.ContainerPort {
	if !publish {
		return nil
	}
	return []corev1.ContainerPort{
		{Name: "tcp", ContainerPort: podPort, HostPort: mappedPort, Protocol: corev1.ProtocolTCP},
		{Name: "udp", ContainerPort: podPort + 1, HostPort: mappedPort + 1, Protocol: corev1.ProtocolUDP},
	}
}

// waitServing waits until the pod runs and its server answers on its own loopback (which
// proves the server listens, without depending on the paths under test).
func (r *run) waitServing(ctx context.Context, pod *corev1.Pod) (*corev1.Pod, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	port := podPort
	if pod.Spec.HostNetwork {
		port = hostPort
	}
	last := "not running"
	for {
		p, err := r.cfg.Kube.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		switch {
		case err != nil:
			last = err.Error()
		case p.Status.Phase == corev1.PodFailed:
			return nil, fmt.Errorf("pod %s on %s failed: %s %s", pod.Name, pod.Spec.NodeName, p.Status.Reason, p.Status.Message)
		case p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "":
			res := r.probe(ctx, p, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
			if res.code == 0 {
				return p, nil
			}
			last = res.describe()
		default:
			last = fmt.Sprintf("phase %s %s", p.Status.Phase, containerState(p))
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("pod %s on %s does not serve: %s", pod.Name, pod.Spec.NodeName, last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func containerState(p *corev1.Pod) string {
	var parts []string
	for _, c := range p.Status.ContainerStatuses {
		if w := c.State.Waiting; w != nil {
			parts = append(parts, w.Reason+": "+w.Message)
		}
	}
	return strings.Join(parts, "; ")
}
