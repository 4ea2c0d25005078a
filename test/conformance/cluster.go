package conformance

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// The shape of cyclonus's default cluster: every pod serves TCP and UDP on these ports, with
// cyclonus's port names (serve-80-tcp, ...), which its named-port cases refer to.
var (
	servedPorts     = []int{80, 81}
	servedProtocols = []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP}
)

// containerName is the one container of every test pod (cyclonus runs one container per
// port; one process serving all four keeps the 2-core lab light, and the oracle sees only
// the pod's ports and their names, which are the same).
const containerName = "netcheck"

// Cluster is the live cluster the cases run on, reached through its API only.
type Cluster struct {
	Kube kubernetes.Interface
	// REST is the client configuration exec uses (the same as Kube's).
	REST *rest.Config
	// Image runs `twill netcheck`; pods use it with imagePullPolicy Never.
	Image string
	// Nodes are the schedulable nodes pods are spread over (by name).
	Nodes []string
	// ProbeTimeout bounds one probe: a dropped packet shows as a timeout this long.
	ProbeTimeout time.Duration
	// Parallel bounds the execs in flight (each probes one pod's targets: ProbeMany).
	Parallel int
	Log      *slog.Logger
}

// Verdict is what a probe saw.
type Verdict int

const (
	// Failed means the probe could not be run (exec failed, unexpected exit).
	Failed Verdict = iota
	Allowed
	Blocked
)

func (v Verdict) String() string {
	switch v {
	case Allowed:
		return "allowed"
	case Blocked:
		return "blocked"
	}
	return "probe failed"
}

// ProbeResult is what one probe from a pod saw (a target of `twill netcheck probe`).
type ProbeResult struct {
	Verdict Verdict
	// Detail tells how: "answered", "timed out", "refused", ...
	Detail string
}

// nodeFor spreads pods over the nodes: cyclonus's pods a, b, c of one namespace land on three
// different nodes, so every namespace has same-node and cross-node pairs.
func (c *Cluster) nodeFor(ns, pod string) string {
	if i := slices.Index([]string{"a", "b", "c"}, pod); i >= 0 {
		return c.Nodes[i%len(c.Nodes)]
	}
	h := fnv.New32a()
	h.Write([]byte(ns + "/" + pod))
	return c.Nodes[int(h.Sum32())%len(c.Nodes)]
}

// CreateNamespace creates a namespace with the given labels and returns the labels the API
// holds afterwards (it adds kubernetes.io/metadata.name).
func (c *Cluster) CreateNamespace(ctx context.Context, name string, labels map[string]string) (map[string]string, error) {
	got, err := c.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating namespace %s: %w", name, err)
	}
	return got.Labels, nil
}

// SetNamespaceLabels replaces a namespace's labels and returns what the API holds afterwards.
func (c *Cluster) SetNamespaceLabels(ctx context.Context, name string, labels map[string]string) (map[string]string, error) {
	ns, err := c.Kube.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	ns.Labels = labels
	got, err := c.Kube.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("labelling namespace %s: %w", name, err)
	}
	return got.Labels, nil
}

// DeleteNamespace deletes a namespace (its pods go with it, through the namespace controller).
func (c *Cluster) DeleteNamespace(ctx context.Context, name string) error {
	zero := int64(0)
	_ = c.Kube.CoreV1().Pods(name).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{})
	if err := c.Kube.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting namespace %s: %w", name, err)
	}
	return nil
}

// CreatePod creates a serving pod and waits until it serves; it returns the pod's IP.
func (c *Cluster) CreatePod(ctx context.Context, ns, name string, labels map[string]string) (string, error) {
	zero := int64(0)
	var ports []corev1.ContainerPort
	args := []string{"/twill", "netcheck", "serve"}
	for _, proto := range servedProtocols {
		var list []string
		for _, port := range servedPorts {
			ports = append(ports, corev1.ContainerPort{Name: portName(port, proto), ContainerPort: int32(port), Protocol: proto})
			list = append(list, strconv.Itoa(port))
		}
		args = append(args, "--"+strings.ToLower(string(proto)), strings.Join(list, ","))
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:                      c.nodeFor(ns, name),
			TerminationGracePeriodSeconds: &zero,
			Containers: []corev1.Container{{
				Name: containerName, Image: c.Image, ImagePullPolicy: corev1.PullNever,
				Command: args, Ports: ports,
				Env: []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{
					FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
			}},
		},
	}
	// A namespace made a moment ago may not have its default service account yet.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := c.Kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		if err == nil {
			break
		}
		if !apierrors.IsForbidden(err) && !apierrors.IsServerTimeout(err) || time.Now().After(deadline) {
			return "", fmt.Errorf("creating pod %s/%s: %w", ns, name, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	return c.waitServing(ctx, ns, name)
}

func portName(port int, proto corev1.Protocol) string {
	return fmt.Sprintf("serve-%d-%s", port, strings.ToLower(string(proto)))
}

// waitServing waits until the pod runs and its server answers on the pod's own loopback
// (proving it listens without depending on the paths under test).
func (c *Cluster) waitServing(ctx context.Context, ns, name string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	last := "not running"
	for {
		p, err := c.Kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		switch {
		case err != nil:
			last = err.Error()
		case p.Status.Phase == corev1.PodFailed:
			return "", fmt.Errorf("pod %s/%s failed: %s %s", ns, name, p.Status.Reason, p.Status.Message)
		case p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "":
			res := c.Probe(ctx, ns, name, corev1.ProtocolTCP, net.JoinHostPort("127.0.0.1", strconv.Itoa(servedPorts[0])))
			if res.Verdict == Allowed {
				return p.Status.PodIP, nil
			}
			last = res.Detail
		default:
			last = "phase " + string(p.Status.Phase)
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("pod %s/%s does not serve: %s", ns, name, last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// SetPodLabels replaces a pod's labels.
func (c *Cluster) SetPodLabels(ctx context.Context, ns, name string, labels map[string]string) error {
	for range 5 {
		p, err := c.Kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		p.Labels = labels
		_, err = c.Kube.CoreV1().Pods(ns).Update(ctx, p, metav1.UpdateOptions{})
		if !apierrors.IsConflict(err) {
			if err != nil {
				return fmt.Errorf("labelling pod %s/%s: %w", ns, name, err)
			}
			return nil
		}
	}
	return fmt.Errorf("labelling pod %s/%s: kept conflicting", ns, name)
}

// DeletePod deletes a pod at once and waits until it is gone.
func (c *Cluster) DeletePod(ctx context.Context, ns, name string) error {
	zero := int64(0)
	if err := c.Kube.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting pod %s/%s: %w", ns, name, err)
	}
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		_, err := c.Kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("pod %s/%s still there a minute after its deletion", ns, name)
}

// DeleteAllPolicies removes every NetworkPolicy of the namespaces and waits until the API
// lists none.
func (c *Cluster) DeleteAllPolicies(ctx context.Context, namespaces []string) error {
	for _, ns := range namespaces {
		err := c.Kube.NetworkingV1().NetworkPolicies(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting the policies of %s: %w", ns, err)
		}
	}
	for _, ns := range namespaces {
		list, err := c.Kube.NetworkingV1().NetworkPolicies(ns).List(ctx, metav1.ListOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		if err == nil && len(list.Items) > 0 {
			return fmt.Errorf("namespace %s still has %d policies after deleting them", ns, len(list.Items))
		}
	}
	return nil
}

// forEach runs f on every item, at most parallel at once.
func forEach[T any](ctx context.Context, parallel int, items []T, f func(context.Context, T)) {
	sem := make(chan struct{}, max(parallel, 1))
	var wg sync.WaitGroup
	for _, it := range items {
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			f(ctx, it)
		}()
	}
	wg.Wait()
}
