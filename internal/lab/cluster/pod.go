package cluster

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/twill-net/twill/internal/lab/underlay"
)

// PodNamespace is the Kubernetes namespace lab pods are created in.
const PodNamespace = "default"

// Pod is a pod as the runtime sees it: a Pod object bound to a node, a sandbox network
// namespace, and the CNI attachment twill made for it.
type Pod struct {
	Name string
	// Namespace is the pod's Kubernetes namespace; "" means PodNamespace.
	Namespace   string
	UID         string
	Node        *Node
	ContainerID string
	// Sandbox is the pod's network namespace; its Do, DialContext and Listen run in it.
	Sandbox *underlay.Node
	Result  *types100.Result
	IPs     []netip.Addr
}

// CreatePodObject creates the Pod object bound to node (as the scheduler would), which the
// agent checks allocations against.
func (c *Cluster) CreatePodObject(ctx context.Context, node *Node, name string) (*corev1.Pod, error) {
	return c.createPodObject(ctx, node, PodOptions{Name: name})
}

// PodOptions describe a pod made by AddPodWith.
type PodOptions struct {
	Name string
	// Namespace is the pod's namespace ("" means PodNamespace); it must exist.
	Namespace string
	Labels    map[string]string
	// AfterAdd, when set, is called the moment CNI ADD has answered, before the status is
	// reported: what a test does there happens in the pod's first milliseconds.
	AfterAdd func(*Pod)
}

func (o PodOptions) namespace() string {
	if o.Namespace == "" {
		return PodNamespace
	}
	return o.Namespace
}

func (c *Cluster) createPodObject(ctx context.Context, node *Node, o PodOptions) (*corev1.Pod, error) {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: o.Name, Namespace: o.namespace(), Labels: o.Labels},
		Spec: corev1.PodSpec{
			NodeName:   node.Name,
			Containers: []corev1.Container{{Name: "c", Image: "lab.local/none:0"}},
		},
	}
	obj, err := c.Clients.Kube.CoreV1().Pods(o.namespace()).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating pod %s/%s: %w", o.namespace(), o.Name, err)
	}
	return obj, nil
}

// AddPodWith is AddPod for a pod with a namespace and labels; once ADD has answered it also
// reports the pod's addresses in its status, as the kubelet does, so agents of other nodes
// learn them (this lab runs no kubelet).
func (c *Cluster) AddPodWith(ctx context.Context, node *Node, o PodOptions) (*Pod, error) {
	obj, err := c.createPodObject(ctx, node, o)
	if err != nil {
		return nil, err
	}
	pod, err := c.NewSandbox(node, o.Name, string(obj.UID))
	if err != nil {
		return nil, errors.Join(err, c.deletePodObjectIn(ctx, o.namespace(), o.Name))
	}
	pod.Namespace = o.namespace()
	if err := pod.Add(ctx); err != nil {
		return nil, errors.Join(err, pod.Del(ctx), pod.removeSandbox(), c.deletePodObjectIn(ctx, o.namespace(), o.Name))
	}
	if o.AfterAdd != nil {
		o.AfterAdd(pod)
	}
	if err := c.reportPodIPs(ctx, obj, pod.IPs); err != nil {
		return nil, errors.Join(err, c.Remove(ctx, pod))
	}
	return pod, nil
}

// reportPodIPs writes the pod's addresses and the Running phase into its status.
func (c *Cluster) reportPodIPs(ctx context.Context, obj *corev1.Pod, ips []netip.Addr) error {
	obj = obj.DeepCopy()
	obj.Status.Phase = corev1.PodRunning
	obj.Status.PodIPs = nil
	for _, ip := range ips {
		obj.Status.PodIPs = append(obj.Status.PodIPs, corev1.PodIP{IP: ip.String()})
	}
	if len(ips) > 0 {
		obj.Status.PodIP = ips[0].String()
	}
	_, err := c.Clients.Kube.CoreV1().Pods(obj.Namespace).UpdateStatus(ctx, obj, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("reporting the addresses of pod %s/%s: %w", obj.Namespace, obj.Name, err)
	}
	return nil
}

// AddPod creates the Pod object and its sandbox namespace and runs CNI ADD for it on its node.
// On failure it removes what it made (as a runtime would: DEL after a failed ADD).
func (c *Cluster) AddPod(ctx context.Context, node *Node, name string) (*Pod, error) {
	obj, err := c.CreatePodObject(ctx, node, name)
	if err != nil {
		return nil, err
	}
	pod, err := c.NewSandbox(node, name, string(obj.UID))
	if err != nil {
		return nil, errors.Join(err, c.deletePodObject(ctx, name))
	}
	if err := pod.Add(ctx); err != nil {
		return nil, errors.Join(err, pod.Del(ctx), pod.removeSandbox(), c.deletePodObject(ctx, name))
	}
	return pod, nil
}

// NewSandbox makes the sandbox namespace of a pod (without any CNI call).
func (c *Cluster) NewSandbox(node *Node, name, uid string) (*Pod, error) {
	id := fmt.Sprintf("%x", sha256.Sum256([]byte(node.Name+"/"+name+"/"+uid)))
	nsName := fmt.Sprintf("%s-p-%s", c.opts.Name, id[:12])
	path, err := underlay.CreateNetns(nsName)
	if err != nil {
		return nil, err
	}
	return &Pod{Name: name, UID: uid, Node: node, ContainerID: id,
		Sandbox: &underlay.Node{Name: nsName, Netns: path}}, nil
}

// RuntimeConf is what the runtime passes the plugin for this pod.
func (p *Pod) RuntimeConf() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: p.ContainerID,
		NetNS:       p.Sandbox.Netns,
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", p.namespace()},
			{"K8S_POD_NAME", p.Name},
			{"K8S_POD_UID", p.UID},
		},
	}
}

// Add runs CNI ADD through libcni from inside the node's namespace, as the node's runtime would.
func (p *Pod) Add(ctx context.Context) error {
	cni, list := p.Node.CNI()
	var res types.Result
	err := p.Node.Do(func() error {
		var err error
		res, err = cni.AddNetworkList(ctx, list, p.RuntimeConf())
		return err
	})
	if err != nil {
		return fmt.Errorf("CNI ADD of pod %s on %s: %w", p.Name, p.Node.Name, err)
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return err
	}
	p.Result, p.IPs = r, nil
	for _, ipc := range r.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
			p.IPs = append(p.IPs, a.Unmap())
		}
	}
	return nil
}

func (p *Pod) namespace() string {
	if p.Namespace == "" {
		return PodNamespace
	}
	return p.Namespace
}

// Del runs CNI DEL through libcni from inside the node's namespace.
func (p *Pod) Del(ctx context.Context) error {
	cni, list := p.Node.CNI()
	return p.Node.Do(func() error { return cni.DelNetworkList(ctx, list, p.RuntimeConf()) })
}

// Check runs CNI CHECK.
func (p *Pod) Check(ctx context.Context) error {
	cni, list := p.Node.CNI()
	return p.Node.Do(func() error { return cni.CheckNetworkList(ctx, list, p.RuntimeConf()) })
}

// IPv4 returns the pod's IPv4 address (invalid if none).
func (p *Pod) IPv4() netip.Addr {
	for _, a := range p.IPs {
		if a.Is4() {
			return a
		}
	}
	return netip.Addr{}
}

// IPv6 returns the pod's IPv6 address (invalid if none).
func (p *Pod) IPv6() netip.Addr {
	for _, a := range p.IPs {
		if a.Is6() {
			return a
		}
	}
	return netip.Addr{}
}

// Exec prepares a command run inside the pod's network namespace.
func (p *Pod) Exec(ctx context.Context, prog string, args ...string) *exec.Cmd {
	return p.Sandbox.Command(ctx, prog, args...)
}

// Remove deletes the pod the way kubelet does: CNI DEL, then the sandbox, then the Pod object.
func (c *Cluster) Remove(ctx context.Context, p *Pod) error {
	return errors.Join(p.Del(ctx), p.removeSandbox(), c.deletePodObjectIn(ctx, p.namespace(), p.Name))
}

func (p *Pod) removeSandbox() error { return underlay.DeleteNetns(p.Sandbox.Name) }

// DeletePodObject removes the Pod object only (a pod whose DEL never comes).
func (c *Cluster) DeletePodObject(ctx context.Context, name string) error {
	return c.deletePodObject(ctx, name)
}

func (c *Cluster) deletePodObject(ctx context.Context, name string) error {
	return c.deletePodObjectIn(ctx, PodNamespace, name)
}

func (c *Cluster) deletePodObjectIn(ctx context.Context, namespace, name string) error {
	zero := int64(0)
	err := c.Clients.Kube.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}
