package labctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/twill-net/twill/internal/lab/cluster"
	"github.com/twill-net/twill/internal/lab/kubenode"
)

// Routing modes the lab offers (the agent's --routing).
const (
	RoutingVXLAN  = "vxlan"
	RoutingNative = "native"
	RoutingAuto   = "auto"
)

// Who serves Services in the lab (`lab up --services`).
const (
	// ServicesTwill: the twill agents replace kube-proxy (no kube-proxy runs).
	ServicesTwill = "twill"
	// ServicesKubeProxy: the upstream kube-proxy (nftables mode) on every node, the
	// comparison twill is measured against.
	ServicesKubeProxy = "kube-proxy"
	// ServicesKubeProxyIPTables: the upstream kube-proxy in iptables mode (Debian's iptables
	// must be installed).
	ServicesKubeProxyIPTables = "kube-proxy-iptables"
)

// Options describe the lab the supervisor runs.
type Options struct {
	Paths Paths
	// Name prefixes the lab's namespaces (DefaultName).
	Name  string
	Nodes int
	// Routing is the agents' routing mode. With "auto" the last node (of two or more) sits in a
	// second underlay subnet, so that auto has both cases to handle: native routing within the
	// first subnet, VXLAN across; with the other modes every node shares one subnet.
	Routing string
	// Services says who serves Services: ServicesTwill (default) or ServicesKubeProxy.
	Services string
	// UpstreamBin holds etcd, the Kubernetes programs and kubectl; TwillBin is the twill
	// binary the agents run; CNIBin is a directory holding twill-cni.
	UpstreamBin, TwillBin, CNIBin string
	Log                           *slog.Logger
}

func (o *Options) validate() error {
	if o.Name == "" {
		o.Name = DefaultName
	}
	if o.Nodes < 1 || o.Nodes > 50 {
		return fmt.Errorf("lab: %d nodes: want 1 to 50", o.Nodes)
	}
	switch o.Routing {
	case RoutingVXLAN, RoutingNative, RoutingAuto:
	default:
		return fmt.Errorf("lab: routing %q: want vxlan, native or auto", o.Routing)
	}
	switch o.Services {
	case "":
		o.Services = ServicesTwill
	case ServicesTwill, ServicesKubeProxy, ServicesKubeProxyIPTables:
	default:
		return fmt.Errorf("lab: services %q: want %s, %s or %s", o.Services, ServicesTwill, ServicesKubeProxy, ServicesKubeProxyIPTables)
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}

// agentArgs are the flags of every agent of the lab.
func (o *Options) agentArgs() []string {
	args := []string{"--routing", o.Routing}
	if o.Services == ServicesTwill {
		args = append(args, "--services")
	}
	return args
}

// kubeProxyMode is kube-proxy's mode for Services (ignored when kube-proxy does not run).
func (o *Options) kubeProxyMode() string {
	if o.Services == ServicesKubeProxyIPTables {
		return kubenode.KubeProxyIPTables
	}
	return kubenode.KubeProxyNFTables
}

// nodeSpecs names the nodes node1..nodeN and places them on the underlay (see Options.Routing).
func (o *Options) nodeSpecs() []cluster.NodeSpec {
	specs := make([]cluster.NodeSpec, o.Nodes)
	for i := range specs {
		specs[i] = cluster.NodeSpec{Name: "node" + strconv.Itoa(i+1)}
	}
	if o.Routing == RoutingAuto && o.Nodes >= 2 {
		specs[o.Nodes-1].Subnet = 1
	}
	return specs
}

// Serve is the supervisor: it brings the lab up, publishing its progress in the state file,
// serves the machine's kubeconfig through a proxy, and when ctx ends (SIGTERM from `down`)
// removes everything it made. It returns the error that made the lab fail to come up.
func Serve(ctx context.Context, opts Options) error {
	if err := opts.validate(); err != nil {
		return err
	}
	p, log := opts.Paths, opts.Log
	if err := os.MkdirAll(p.clusterDir(), 0o755); err != nil {
		return err
	}
	if err := p.writePid(); err != nil {
		return err
	}
	state := State{Phase: PhaseStarting, Name: opts.Name, Routing: opts.Routing, Services: opts.Services}
	if err := p.writeState(state); err != nil {
		return err
	}
	start := time.Now()
	lab, err := bringUp(ctx, opts, &state)
	if err != nil {
		state.Phase, state.Error = PhaseFailed, err.Error()
		log.Error("lab failed to come up", "err", err)
		return errors.Join(err, p.writeState(state))
	}
	state.Phase, state.Took = PhaseReady, time.Since(start).Round(time.Second).String()
	if err := p.writeState(state); err != nil {
		log.Error("writing the state", "err", err)
	}
	log.Info("lab ready", "nodes", opts.Nodes, "routing", opts.Routing, "took", state.Took, "kubeconfig", state.Kubeconfig)
	<-ctx.Done()
	log.Info("stopping the lab")
	state.Phase = PhaseStopping
	_ = p.writeState(state)
	err = lab.close()
	if err != nil {
		log.Error("stopping the lab", "err", err)
	} else {
		log.Info("lab stopped")
	}
	return err
}

// runningLab is what the supervisor holds while the lab runs.
type runningLab struct {
	cluster *cluster.Cluster
	proxy   net.Listener
	wg      sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]bool // the proxy's open connections, both sides
}

func (l *runningLab) close() error {
	var errs []error
	if l.proxy != nil {
		errs = append(errs, l.proxy.Close())
		// Clients keep connections open (HTTP/2, watches): end them, or stopping would wait
		// for every kubectl and informer on the machine to hang up.
		l.mu.Lock()
		for c := range l.conns {
			_ = c.Close()
		}
		l.conns = nil
		l.mu.Unlock()
		l.wg.Wait()
	}
	if l.cluster != nil {
		errs = append(errs, l.cluster.Close())
	}
	return errors.Join(errs...)
}

func bringUp(ctx context.Context, opts Options, state *State) (lab *runningLab, err error) {
	p, log := opts.Paths, opts.Log
	lab = &runningLab{}
	defer func() {
		if err != nil {
			err = errors.Join(err, lab.close())
			lab = nil
		}
	}()
	// A context for the start only: ctx ending (down during up) aborts it.
	log.Info("building images (pause, twill workload, CoreDNS)")
	imageDir := filepath.Join(p.Dir, "images")
	pause, err := kubenode.BuildPauseImage(ctx, imageDir)
	if err != nil {
		return lab, err
	}
	workload, err := BuildWorkloadImage(ctx, imageDir)
	if err != nil {
		return lab, err
	}
	images := []kubenode.Image{pause, workload}
	dnsImage, dnsImageErr := BuildCoreDNSImage(imageDir, opts.UpstreamBin)
	if dnsImageErr == nil {
		images = append(images, dnsImage)
	}
	log.Info("starting the control plane and nodes", "nodes", opts.Nodes, "routing", opts.Routing)
	var kubeNodes sync.Map // node name -> *kubenode.Node
	lab.cluster, err = cluster.Start(ctx, cluster.Options{
		Name: opts.Name, Dir: p.clusterDir(),
		UpstreamBin: opts.UpstreamBin, TwillBin: opts.TwillBin, CNIBin: opts.CNIBin,
		Nodes:       opts.nodeSpecs(),
		AgentArgs:   opts.agentArgs(),
		Controllers: true,
		Log:         log,
		NodeRuntime: func(ctx context.Context, c *cluster.Cluster, n *cluster.Node) (cluster.NodeRuntime, error) {
			log.Info("starting node", "node", n.Name, "ip", n.IP)
			kn, err := kubenode.Start(ctx, kubenode.Config{
				Node: n.Node, ControlPlane: c.CP, Dir: filepath.Join(n.Dir, "kube"), BinDir: opts.UpstreamBin,
				SharedDirs: []string{p.Dir, filepath.Dir(opts.TwillBin), opts.CNIBin},
				CNIPlugins: map[string]string{
					"twill-cni": filepath.Join(opts.CNIBin, "twill-cni"),
					"portmap":   "/usr/lib/cni/portmap",
					"loopback":  "/usr/lib/cni/loopback",
				},
				Images:        images,
				KubeProxy:     opts.Services == ServicesKubeProxy || opts.Services == ServicesKubeProxyIPTables,
				KubeProxyMode: opts.kubeProxyMode(),
				Log:           log,
			})
			if err != nil {
				return nil, err
			}
			kubeNodes.Store(n.Name, kn)
			return kn, nil
		},
	})
	if err != nil {
		return lab, err
	}
	if err := lab.serveProxy(ctx, log); err != nil {
		return lab, err
	}
	state.Server = "https://" + lab.proxy.Addr().String()
	state.Kubeconfig = p.Kubeconfig()
	state.Kubectl = filepath.Join(opts.UpstreamBin, "kubectl")
	if err := writeMachineKubeconfig(lab.cluster, state.Kubeconfig, state.Server); err != nil {
		return lab, err
	}
	for _, un := range lab.cluster.Net.Nodes() {
		ns := NodeState{Name: un.Name, IP: un.IP.String(), Subnet: un.Prefix.String(), Enter: []string{"--net=" + un.Netns}}
		if kn, ok := kubeNodes.Load(un.Name); ok {
			// The node's own nsenter arguments, as it starts its programs.
			args := kn.(*kubenode.Node).Command(context.Background(), "true").Args
			ns.Enter, ns.Kubelet = args[1:len(args)-2], true
		}
		state.Nodes = append(state.Nodes, ns)
	}
	log.Info("waiting for the nodes to be Ready")
	for _, n := range lab.cluster.Nodes() {
		if err := waitNodeReady(ctx, lab.cluster, n.Name); err != nil {
			return lab, err
		}
		log.Info("node Ready", "node", n.Name)
	}
	state.DNS = startClusterDNS(ctx, lab.cluster, dnsImageErr, log)
	return lab, nil
}

// serveProxy listens on a free port of 127.0.0.1 in the machine's namespace and relays each
// connection to the apiserver, dialled from inside the control-plane node: the machine has no
// route into the lab, by design. The apiserver's certificate names 127.0.0.1, so TLS and
// client credentials pass through unchanged.
func (l *runningLab) serveProxy(ctx context.Context, log *slog.Logger) error {
	u, err := url.Parse(l.cluster.CP.Server())
	if err != nil {
		return err
	}
	cp := l.cluster.Net.Nodes()[0] // the underlay's first node is the control plane's
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listening for the apiserver proxy: %w", err)
	}
	l.proxy, l.conns = ln, map[net.Conn]bool{}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		var conns sync.WaitGroup
		defer conns.Wait()
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer conns.Done()
				defer client.Close()
				if !l.track(client) {
					return
				}
				defer l.untrack(client)
				server, err := cp.DialContext(ctx, "tcp", u.Host)
				if err != nil {
					log.Warn("apiserver proxy: dialling the apiserver", "err", err)
					return
				}
				defer server.Close()
				if !l.track(server) {
					return
				}
				defer l.untrack(server)
				relay(client, server)
			}()
		}
	}()
	return nil
}

// track records an open connection of the proxy; false when the proxy is closing.
func (l *runningLab) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns == nil {
		return false
	}
	l.conns[c] = true
	return true
}

func (l *runningLab) untrack(c net.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.conns, c)
}

// relay copies both ways until either side is done, then closes both.
func relay(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	_ = a.Close()
	_ = b.Close()
	<-done
}

// writeMachineKubeconfig writes the admin kubeconfig with server as its server URL.
func writeMachineKubeconfig(c *cluster.Cluster, path, server string) error {
	if err := c.CP.WriteKubeconfig(path); err != nil {
		return err
	}
	cfg, err := clientcmd.LoadFromFile(path)
	if err != nil {
		return err
	}
	for _, cl := range cfg.Clusters {
		cl.Server = server
	}
	return clientcmd.WriteToFile(*cfg, path)
}

func waitNodeReady(ctx context.Context, c *cluster.Cluster, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	last := "not registered"
	for {
		node, err := c.Clients.Kube.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			for _, cond := range node.Status.Conditions {
				if cond.Type == corev1.NodeReady {
					if cond.Status == corev1.ConditionTrue {
						return nil
					}
					last = cond.Reason + ": " + cond.Message
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s not Ready: %s", name, last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}
