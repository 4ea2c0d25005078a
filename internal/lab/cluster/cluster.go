// Package cluster assembles a pod-network cluster out of the lab's parts: an underlay of node
// namespaces, a real control plane, and a real `twill agent` process on every node. Pods are
// network namespaces wired by the real twill-cni plugin driven through libcni, exactly as a
// container runtime drives it. Tests and benchmarks of pod networking run on it; the full lab
// (kubelets, containerd) adds the runtime on top of the same parts.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/twill-net/twill/deploy/crds"
	"github.com/twill-net/twill/deploy/rbac"
	"github.com/twill-net/twill/internal/kube"
	"github.com/twill-net/twill/internal/lab/controlplane"
	"github.com/twill-net/twill/internal/lab/underlay"
)

// NodeSpec names a node and the underlay subnet (index into Options.Subnets) it sits on.
type NodeSpec struct {
	Name   string
	Subnet int
}

// Options describe the cluster to build.
type Options struct {
	// Name prefixes every namespace (keep it short: it is part of interface-free names only,
	// but namespaces show up in `ip netns`).
	Name string
	// Dir holds the control plane's files and each node's agent state and logs.
	Dir string
	// UpstreamBin holds etcd and kube-apiserver; TwillBin is the twill binary; CNIBin is a
	// directory with twill-cni (a CNI_PATH).
	UpstreamBin, TwillBin, CNIBin string
	// Subnets of the underlay (default: 10.254.1.0/24 and 10.254.2.0/24); the control plane
	// sits on the first.
	Subnets []netip.Prefix
	Nodes   []NodeSpec
	// AgentArgs are extra flags for every agent (routing mode, pools, intervals).
	AgentArgs []string
	Log       *slog.Logger
	// Controllers also runs kube-controller-manager and kube-scheduler (then UpstreamBin must
	// hold them): pods are scheduled, service accounts made, as in a real cluster.
	Controllers bool
	// ExtraAPIServerArgs are appended to the apiserver's command line (a later flag wins): a
	// benchmark's settings for a lab of its own.
	ExtraAPIServerArgs []string
	// NodeRuntime, when set, makes each node a real Kubernetes node (package kubenode: kubelet
	// and containerd) before its agent starts; the agent then runs in that node's namespaces
	// and the kubelet, not the cluster, registers the Node object. Pods are then made through
	// the API, not AddPod: the agent sees the node's /run, not the machine's namespaces.
	NodeRuntime func(ctx context.Context, c *Cluster, n *Node) (NodeRuntime, error)
}

// NodeRuntime is what runs on a node besides its agent when the cluster has kubelets.
type NodeRuntime interface {
	// Command prepares prog to run on the node as its own programs run (its namespaces).
	Command(ctx context.Context, prog string, args ...string) *exec.Cmd
	// AgentArgs are flags the node's agent needs there (where to write the CNI config).
	AgentArgs() []string
	// Close stops the runtime and removes everything it made.
	Close() error
}

// Cluster is a running cluster; Close removes all of it.
type Cluster struct {
	opts    Options
	Net     *underlay.Network
	CP      *controlplane.ControlPlane
	Clients *kube.Clients
	// Kubeconfig is the admin kubeconfig for processes inside the lab (the CLI via nsenter, a
	// test's own checks). Agents do not use it: each runs on the twill-agent ServiceAccount
	// (Node.AgentKubeconfig), with the rights a real install grants.
	Kubeconfig string

	mu    sync.Mutex
	nodes map[string]*Node
	order []string
}

// Start builds the cluster and returns once every agent serves CNI requests.
func Start(ctx context.Context, opts Options) (c *Cluster, err error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if len(opts.Subnets) == 0 {
		opts.Subnets = []netip.Prefix{netip.MustParsePrefix("10.254.1.0/24"), netip.MustParsePrefix("10.254.2.0/24")}
	}
	c = &Cluster{opts: opts, nodes: map[string]*Node{}}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Close())
			c = nil
		}
	}()
	if c.Net, err = underlay.New(opts.Name, opts.Subnets...); err != nil {
		return c, err
	}
	cpNode, err := c.Net.AddNode("cp", 0)
	if err != nil {
		return c, err
	}
	opts.Log.Info("starting control plane", "at", cpNode.IP)
	c.CP, err = controlplane.Start(ctx, controlplane.Config{
		Dir:         filepath.Join(opts.Dir, "controlplane"),
		BinDir:      opts.UpstreamBin,
		Node:        cpNode,
		Controllers: opts.Controllers,
		// Lab nodes have no DNS names: the apiserver reaches kubelets (logs, exec,
		// port-forward) at their underlay address.
		ExtraAPIServerArgs: append([]string{"--kubelet-preferred-address-types=InternalIP,Hostname"}, opts.ExtraAPIServerArgs...),
	})
	if err != nil {
		return c, err
	}
	if c.Clients, err = kube.NewClients(c.CP.RESTConfig(), "twill-lab"); err != nil {
		return c, err
	}
	// Without kube-controller-manager nobody creates the default ServiceAccount, and the
	// ServiceAccount admission plugin refuses pods until it exists.
	if _, err = c.Clients.Kube.CoreV1().ServiceAccounts(PodNamespace).Create(ctx,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return c, fmt.Errorf("creating the default service account: %w", err)
	}
	if err = crds.Install(ctx, c.Clients.APIExt); err != nil {
		return c, fmt.Errorf("installing twill's CRDs: %w", err)
	}
	if err = rbac.Install(ctx, c.Clients.Kube); err != nil {
		return c, fmt.Errorf("installing the agent's RBAC: %w", err)
	}
	c.Kubeconfig = filepath.Join(opts.Dir, "admin.kubeconfig")
	if err = c.CP.WriteKubeconfig(c.Kubeconfig); err != nil {
		return c, err
	}
	for _, spec := range opts.Nodes {
		if _, err = c.AddNode(ctx, spec); err != nil {
			return c, err
		}
	}
	for _, n := range c.Nodes() {
		if err = n.WaitReady(ctx); err != nil {
			return c, err
		}
	}
	return c, nil
}

// AddNode attaches a node namespace to the underlay, registers its Node object (with its
// InternalIP, as a kubelet would) and starts its agent.
func (c *Cluster) AddNode(ctx context.Context, spec NodeSpec) (*Node, error) {
	un, err := c.Net.AddNode(spec.Name, spec.Subnet)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(c.opts.Dir, "nodes", spec.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	n := &Node{Node: un, cluster: c, Dir: dir,
		Socket:          filepath.Join(dir, "cni.sock"),
		StateDir:        filepath.Join(dir, "state"),
		PendingDir:      filepath.Join(dir, "pending-del"),
		AgentKubeconfig: filepath.Join(dir, "agent.kubeconfig"),
	}
	if err := c.writeAgentKubeconfig(ctx, n.AgentKubeconfig); err != nil {
		return nil, errors.Join(err, underlay.DeleteNetns(filepath.Base(n.Netns)))
	}
	if c.opts.NodeRuntime != nil {
		if n.runtime, err = c.opts.NodeRuntime(ctx, c, n); err != nil {
			return nil, errors.Join(err, underlay.DeleteNetns(filepath.Base(n.Netns)))
		}
	} else if err := c.registerNode(ctx, n); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.nodes[spec.Name] = n
	c.order = append(c.order, spec.Name)
	c.mu.Unlock()
	if err := n.StartAgent(); err != nil {
		return nil, err
	}
	return n, nil
}

// agentTokenValidity outlives any lab (a lab's certificates last a year too); an agent
// restarted on its node reuses the kubeconfig.
const agentTokenValidity = 365 * 24 * time.Hour

// writeAgentKubeconfig writes a kubeconfig with a token of the agent's ServiceAccount, one per
// node as each DaemonSet pod has its own.
func (c *Cluster) writeAgentKubeconfig(ctx context.Context, path string) error {
	token, err := rbac.Token(ctx, c.Clients.Kube, agentTokenValidity)
	if err != nil {
		return err
	}
	return c.CP.WriteKubeconfigWithToken(path, token)
}

func (c *Cluster) registerNode(ctx context.Context, n *Node) error {
	nodes := c.Clients.Kube.CoreV1().Nodes()
	obj, err := nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("registering node %s: %w", n.Name, err)
	}
	obj.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: n.IP.String()},
		{Type: corev1.NodeHostName, Address: n.Name},
	}
	if _, err := nodes.UpdateStatus(ctx, obj, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("setting node %s's address: %w", n.Name, err)
	}
	return nil
}

// Node returns the named node, or nil.
func (c *Cluster) Node(name string) *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[name]
}

// Nodes returns the nodes in the order they were added.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*Node, 0, len(c.order))
	for _, name := range c.order {
		out = append(out, c.nodes[name])
	}
	return out
}

// RemoveNode takes a node out of the lab: it stops the node's agent, deletes its Node object
// (if it is still there) and its namespace, and forgets it, so Nodes no longer lists it. Its
// directory (agent log, state) stays. Pods bound to the node are the caller's to remove.
func (c *Cluster) RemoveNode(ctx context.Context, name string) error {
	n := c.Node(name)
	if n == nil {
		return fmt.Errorf("no node %q in the lab", name)
	}
	var errs []error
	errs = append(errs, n.StopAgent(), n.closeRuntime())
	err := c.Clients.Kube.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("deleting Node %s: %w", name, err))
	}
	// The underlay keeps the node in its list (Close skips a namespace already gone), so node
	// addresses and veth names are never reused within a run.
	errs = append(errs, underlay.DeleteNetns(filepath.Base(n.Netns)))
	c.mu.Lock()
	delete(c.nodes, name)
	c.order = slices.DeleteFunc(c.order, func(s string) bool { return s == name })
	c.mu.Unlock()
	return errors.Join(errs...)
}

// Close stops the agents and the control plane and removes every namespace; the Dir stays for
// the caller to remove (it holds the logs worth reading after a failure).
func (c *Cluster) Close() error {
	var errs []error
	for _, n := range c.Nodes() {
		errs = append(errs, n.StopAgent(), n.closeRuntime())
	}
	if c.CP != nil {
		errs = append(errs, c.CP.Stop())
	}
	if c.Net != nil {
		errs = append(errs, c.Net.Close())
	}
	return errors.Join(errs...)
}
