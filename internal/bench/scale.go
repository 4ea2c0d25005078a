package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/twill-net/twill/internal/lab/labctl"
)

// The scale suite is `twill lab up --nodes 10` with 100 pods spread over the nodes, on this
// machine: how long the lab takes to come up, how long from creating the pods (one
// Deployment) until every one is Ready, and the resident memory of each node's kubelet,
// containerd and twill agent (and of the control plane), with the lab idle and with the pods.

// ScaleOptions configure the scale suite.
type ScaleOptions struct {
	// Nodes (default 10) and Pods (default 100) of the lab.
	Nodes, Pods int
	// Routing is the agents' mode (default vxlan, as `twill lab up`).
	Routing string
	// TwillBin is the twill binary (default: this program), twill-cni beside it; UpstreamBin
	// holds the Kubernetes programs (default: upstream.Binaries).
	TwillBin, UpstreamBin string
	// Timeout bounds the lab's start and, separately, the wait for the pods (default 20m).
	Timeout  time.Duration
	Progress io.Writer
}

// Defaults of ScaleOptions.
const (
	DefaultScaleNodes   = 10
	DefaultScalePods    = 100
	DefaultScaleTimeout = 20 * time.Minute
	scaleAppLabel       = "twill-bench-scale"
)

// scaleUpstream are the programs the lab runs (as `twill lab up`).
var scaleUpstream = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"}

func runScaleSuite(ctx context.Context, opts Options) (Report, error) {
	return RunScale(ctx, ScaleOptions{Progress: opts.Progress})
}

// scaleResult is what a run measured.
type scaleResult struct {
	nodes, pods int
	labUp       time.Duration
	// ready is each pod's time from the Deployment's creation to its Ready condition.
	ready []time.Duration
	// podsPerNode is where the pods ran.
	podsPerNode  map[string]int
	idle, loaded rssSample
}

// RunScale brings a lab up with `twill lab up`'s machinery (its own name and directory),
// measures, and takes it down.
func RunScale(ctx context.Context, opts ScaleOptions) (rep Report, err error) {
	if opts.Nodes <= 0 {
		opts.Nodes = DefaultScaleNodes
	}
	if opts.Pods <= 0 {
		opts.Pods = DefaultScalePods
	}
	if opts.Routing == "" {
		opts.Routing = labctl.RoutingVXLAN
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultScaleTimeout
	}
	progress := opts.Progress
	if progress == nil {
		progress = io.Discard
	}
	say := func(format string, args ...any) { fmt.Fprintf(progress, "bench scale: "+format+"\n", args...) }
	run, err := prepareLabRun(ctx, opts.TwillBin, opts.UpstreamBin, "scale", datapathLabName, scaleUpstream...)
	if err != nil {
		return rep, err
	}
	twillBin, cniDir, dir, name := run.twillBin, run.cniDir, run.dir, run.name
	opts.UpstreamBin = run.upstreamBin
	p := labctl.Paths{Dir: filepath.Join(dir, "lab")}
	res := scaleResult{nodes: opts.Nodes, pods: opts.Pods}
	defer func() {
		// Down removes the lab's directory too; it runs even after Ctrl-C.
		say("taking the lab down")
		err = errors.Join(err, labctl.Down(context.WithoutCancel(ctx), p, name, progress), os.RemoveAll(dir))
	}()

	say("twill lab up --nodes %d --routing %s (lab %s)", opts.Nodes, opts.Routing, name)
	start := time.Now()
	st, err := labctl.Up(ctx, labctl.UpOptions{
		Options: labctl.Options{Paths: p, Name: name, Nodes: opts.Nodes, Routing: opts.Routing,
			UpstreamBin: opts.UpstreamBin, TwillBin: twillBin, CNIBin: cniDir},
		Self: twillBin, Progress: io.Discard, Timeout: opts.Timeout,
	})
	if err != nil {
		return rep, fmt.Errorf("bringing the lab up (its log: %s): %w", p.Log(), err)
	}
	res.labUp = time.Since(start)
	say("lab up in %s", res.labUp.Round(time.Second))
	kube, err := scaleClient(st.Kubeconfig)
	if err != nil {
		return rep, err
	}
	if res.idle, _, err = sampleRSS(p.Dir, name); err != nil {
		return rep, err
	}

	say("creating %d pods (one Deployment, spread over the nodes) and waiting until all are Ready", opts.Pods)
	waitCtx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	res.ready, res.podsPerNode, err = runPods(waitCtx, kube, opts.Pods, say)
	if err != nil {
		if ctx.Err() != nil || waitCtx.Err() == nil {
			return rep, err
		}
		// Out of time: an overloaded machine is worth reporting, with what did get Ready.
		say("%v; reporting what was measured", err)
		err = nil
	}
	// A moment for the pods' first seconds (image mounts, the agents' reconciles) to settle.
	time.Sleep(10 * time.Second)
	if res.loaded, _, err = sampleRSS(p.Dir, name); err != nil {
		return rep, err
	}
	return Report{Suite: "scale", Measurements: scaleMeasurements(res, runtime.NumCPU())}, nil
}

func scaleClient(kubeconfig string) (kubernetes.Interface, error) {
	rest, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("reading the lab's kubeconfig: %w", err)
	}
	rest.QPS, rest.Burst = 50, 100
	return kubernetes.NewForConfig(rest)
}

// runPods creates the Deployment and polls its pods until every one is Ready, noting when
// each turned Ready (to the poll's half-second). When ctx ends first it returns what it saw
// with the error.
func runPods(ctx context.Context, kube kubernetes.Interface, pods int, say func(string, ...any)) ([]time.Duration, map[string]int, error) {
	replicas := int32(pods)
	zero := int64(0)
	labels := map[string]string{"app": scaleAppLabel}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: scaleAppLabel, Namespace: "default"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: &zero,
					// Evenly over the nodes, as the brief of the figure says.
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew: 1, TopologyKey: corev1.LabelHostname,
						WhenUnsatisfiable: corev1.DoNotSchedule,
						LabelSelector:     &metav1.LabelSelector{MatchLabels: labels},
					}},
					Containers: []corev1.Container{{
						Name: "serve", Image: labctl.WorkloadImage, ImagePullPolicy: corev1.PullNever,
						Command: []string{"/twill", "netcheck", "serve", "--tcp", "8080", "--udp", "8081", "--http", "8082"},
					}},
				},
			},
		},
	}
	start := time.Now()
	if _, err := kube.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		return nil, nil, fmt.Errorf("creating the Deployment: %w", err)
	}
	readyAt := map[string]time.Duration{}
	lastSaid := time.Now()
	for {
		list, err := kube.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=" + scaleAppLabel})
		if err != nil && ctx.Err() == nil {
			say("listing pods: %v (retrying)", err)
		}
		now := time.Since(start)
		perNode := map[string]int{}
		if list != nil {
			for _, pod := range list.Items {
				if podReady(&pod) {
					if _, seen := readyAt[pod.Name]; !seen {
						readyAt[pod.Name] = now
					}
					perNode[pod.Spec.NodeName]++
				}
			}
		}
		if len(perNode) > 0 && sum(perNode) >= pods {
			return readyTimes(readyAt), perNode, nil
		}
		if time.Since(lastSaid) > 15*time.Second {
			say("%d/%d pods Ready after %s", sum(perNode), pods, now.Round(time.Second))
			lastSaid = time.Now()
		}
		select {
		case <-ctx.Done():
			return readyTimes(readyAt), perNode, fmt.Errorf("%d of %d pods Ready when the wait ended: %w", sum(perNode), pods, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func readyTimes(readyAt map[string]time.Duration) []time.Duration {
	ready := make([]time.Duration, 0, len(readyAt))
	for _, d := range readyAt {
		ready = append(ready, d)
	}
	return ready
}

func podReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
