// Package agent wires one node's parts together: the API informers, the IPAM allocator, the
// routing calculator and its netlink reconciler, the policy calculator and its nftables
// reconciler (with its drop events), and the CNI server the plugin talks to. It holds
// no networking logic of its own; each part has a constructor and a Run(ctx), and the agent
// stops them all through the context.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/twill-net/twill/internal/cniserver"
	"github.com/twill-net/twill/internal/datapath/netlinkdp"
	"github.com/twill-net/twill/internal/datapath/nftdp"
	"github.com/twill-net/twill/internal/datapath/nftsvc"
	"github.com/twill-net/twill/internal/flow"
	"github.com/twill-net/twill/internal/ipam"
	"github.com/twill-net/twill/internal/ipam/kubestore"
	"github.com/twill-net/twill/internal/kube"
	"github.com/twill-net/twill/internal/metrics"
	"github.com/twill-net/twill/internal/routing"
)

// Agent is one node's twill agent.
type Agent struct {
	cfg Config
	log *slog.Logger

	// routesApplied turns true once this node's routes have been programmed; until then the
	// CNI server refuses ADD, because a pod that cannot reach other nodes is not yet networked.
	routesApplied atomic.Bool
	// policy enforces network policy; nil when the configuration turns enforcement off.
	policy *policyEnforcer
	// drops holds the policy datapath's recent drop events and hands new ones to subscribers
	// (the flow observability to come); nil when policy enforcement is off.
	drops *flow.Hub
}

// New checks the configuration and returns an agent ready to Run.
func New(cfg Config, log *slog.Logger) (*Agent, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Agent{cfg: cfg, log: log.With("node", cfg.NodeName)}, nil
}

// Run starts every part and blocks until ctx is done or a part fails.
func (a *Agent) Run(ctx context.Context) error {
	restCfg, err := kube.RESTConfig(a.cfg.Kubeconfig)
	if err != nil {
		return err
	}
	clients, err := kube.NewClients(restCfg, "twill-agent/"+a.cfg.NodeName)
	if err != nil {
		return err
	}
	// Parts run in g; one started before an early return below stops with it.
	ctx, cancel := context.WithCancel(ctx)
	g, ctx := errgroup.WithContext(ctx)
	defer func() { cancel(); _ = g.Wait() }()

	w, err := newWatcher(clients, a.cfg.NodeName, a.cfg.Policy)
	if err != nil {
		return err
	}
	// Services first: after a restart, their lists (every Service and EndpointSlice of the
	// cluster) are the longest wait before the first apply, and they need nothing of what
	// follows, so they load meanwhile.
	var services *serviceProxy
	if a.cfg.Services {
		dp := a.cfg.ServiceDatapath
		if dp == nil {
			if dp, err = nftsvc.NewKernel(a.log); err != nil {
				return fmt.Errorf("service datapath (--services=false leaves services to kube-proxy): %w", err)
			}
		}
		if services, err = newServiceProxy(w.core, a.cfg.NodeName, dp, a.log); err != nil {
			return err
		}
		w.synced = append(w.synced, services.synced...)
		g.Go(func() error { return services.run(ctx) })
	}

	node, err := a.waitForNode(ctx, clients)
	if err != nil {
		return err
	}
	nodeIP, err := a.nodeIP(node)
	if err != nil {
		return err
	}
	underlay, err := routing.DetectUnderlay(nodeIP)
	if err != nil {
		return fmt.Errorf("finding the interface that carries node traffic: %w", err)
	}
	podMTU := routing.PodMTU(underlay.MTU, a.cfg.Routing.Mode, nodeIP.Is6(), a.cfg.Routing.MTU)
	a.log.Info("node network found", "nodeIP", nodeIP, "link", underlay.Link, "linkMTU", underlay.MTU,
		"routing", a.cfg.Routing.Mode, "podMTU", podMTU)

	routes := netlinkdp.New(a.log)
	if err := routes.EnableForwarding(); err != nil {
		return err
	}
	fast, err := a.startFastPath(underlay.Index)
	if err != nil {
		return err
	}
	if fast != nil {
		defer fast.close()
	}

	store := kubestore.New(clients.Dynamic)
	if err := a.ensureDefaultPools(ctx, store); err != nil {
		return err
	}
	alloc, err := ipam.NewNodeAllocator(ipam.NodeAllocatorConfig{
		Node:     a.cfg.NodeName,
		StateDir: filepath.Join(a.cfg.StateDir, "ipam"),
		Store:    store,
		Log:      a.log,
		// Pools change rarely; re-listing them on every pod ADD would put an API round trip
		// on the ADD path.
		PoolRefresh: 10 * time.Second,
	})
	if err != nil {
		return err
	}

	cniCfg := cniserver.Config{
		SocketPath:       a.cfg.CNISocket,
		PendingDeleteDir: a.cfg.PendingDeleteDir,
		MTU:              podMTU,
		Ready:            a.ready,
	}
	var collectors []prometheus.Collector
	if fast != nil {
		collectors = append(collectors, fast.collector())
	}
	var dropReceiver *flow.Receiver
	if a.cfg.Policy {
		nft, err := nftdp.NewKernel(a.cfg.NodeName, a.log)
		if err != nil {
			return fmt.Errorf("network policy datapath (--policy=false turns enforcement off): %w", err)
		}
		if a.policy, err = newPolicyEnforcer(clients, w.core, a.cfg.NodeName, nft, a.log); err != nil {
			return err
		}
		if a.cfg.PolicyEstablished == EstablishedReset {
			a.policy.resetter = newConntrackResetter(a.cfg.NodeName)
		}
		collectors = append(collectors, &metrics.PolicyVerdicts{Reader: nft, Actions: a.policy.ruleActions})
		if a.drops, dropReceiver, err = a.newDropEvents(nft); err != nil {
			return err
		}
		w.synced = append(w.synced, a.policy.synced...)
		a.policy.seedAddresses(alloc.Allocations())
		cniCfg.BeforeReady = a.policy.beforeReady
	} else {
		a.log.Warn("network policy enforcement is off: NetworkPolicies are not enforced on this node")
	}
	if services != nil {
		collectors = append(collectors, services.programming.hist)
	}
	var cniAlloc ipam.Allocator = alloc
	if a.policy != nil {
		cniAlloc = releaseWatcher{Allocator: alloc, onRelease: a.policy.released}
	}
	cni := cniserver.New(cniCfg, cniAlloc, a.log)

	if a.cfg.MetricsAddress != "" {
		reg, err := metrics.NewRegistry(collectors...)
		if err != nil {
			return err
		}
		g.Go(func() error { return metrics.Serve(ctx, a.cfg.MetricsAddress, reg, a.log, dropRoutes(a.drops)...) })
	}
	if dropReceiver != nil {
		g.Go(func() error { return a.runDropEvents(ctx, dropReceiver) })
	}
	g.Go(func() error { return w.run(ctx) })
	if !w.waitForSync(ctx) {
		return fmt.Errorf("caches did not sync: %w", context.Cause(ctx))
	}
	g.Go(func() error { return alloc.Run(ctx) })
	g.Go(func() error {
		return a.routeLoop(ctx, w, routes, routing.Underlay(underlay), nodeIP)
	})
	if a.policy != nil {
		g.Go(func() error { return a.policy.run(ctx) })
	}
	if fast != nil {
		g.Go(func() error { return fast.run(ctx) })
	}
	g.Go(func() error { return cni.Run(ctx) })
	g.Go(func() error { return a.reconcileLoop(ctx, clients, w, alloc, cni, store) })
	if a.cfg.CNIConfDir != "" {
		g.Go(func() error { return a.writeCNIConfigWhenReady(ctx) })
	}
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func (a *Agent) ready() error {
	if !a.routesApplied.Load() {
		return errors.New("twill agent is starting: routes to other nodes are not programmed yet")
	}
	if a.policy != nil {
		if err := a.policy.ready(); err != nil {
			return fmt.Errorf("twill agent is starting: %w", err)
		}
	}
	return nil
}

// waitForNode waits for this node's Node object: the kubelet registers it, possibly after the
// agent has started.
func (a *Agent) waitForNode(ctx context.Context, c *kube.Clients) (*corev1.Node, error) {
	var node *corev1.Node
	logged := false
	err := wait.PollUntilContextCancel(ctx, time.Second, true, func(ctx context.Context) (bool, error) {
		n, err := c.Kube.CoreV1().Nodes().Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			if !logged {
				a.log.Info("waiting for this node's Node object to be registered")
				logged = true
			}
			return false, nil
		}
		if err != nil {
			a.log.Warn("reading this node's Node object", "err", err)
			return false, nil
		}
		node = n
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for Node %q: %w", a.cfg.NodeName, err)
	}
	return node, nil
}

func (a *Agent) nodeIP(node *corev1.Node) (netip.Addr, error) {
	if a.cfg.NodeIP.IsValid() {
		return a.cfg.NodeIP, nil
	}
	ips := nodeAddresses(node)
	if len(ips) == 0 {
		return netip.Addr{}, fmt.Errorf("node %q has no InternalIP address in its status; set --node-ip", node.Name)
	}
	return ips[0], nil
}

func (a *Agent) ensureDefaultPools(ctx context.Context, store ipam.BlockStore) error {
	pools, err := store.ListPools(ctx)
	if err != nil {
		return fmt.Errorf("listing IP pools: %w", err)
	}
	if len(pools) > 0 {
		return nil
	}
	for _, p := range []struct {
		name   string
		prefix netip.Prefix
		block  int
	}{{"default-ipv4", a.cfg.DefaultPoolV4, 26}, {"default-ipv6", a.cfg.DefaultPoolV6, 122}} {
		if !p.prefix.IsValid() {
			continue
		}
		pool := ipam.Pool{Name: p.name, CIDR: p.prefix, BlockSize: p.block}
		if err := store.EnsurePool(ctx, pool); err != nil {
			return fmt.Errorf("creating default pool %s: %w", p.name, err)
		}
		a.log.Info("created default IP pool", "pool", p.name, "cidr", p.prefix, "blockSize", p.block)
	}
	return nil
}
