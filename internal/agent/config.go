package agent

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/twill-net/twill/internal/cniproto"
	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/metrics"
	"github.com/twill-net/twill/internal/routing"
)

// Config is everything one node's agent needs; cmd/twill fills it from flags.
type Config struct {
	// NodeName is this node's name in the API (the DaemonSet passes spec.nodeName).
	NodeName string
	// NodeIP overrides the node address taken from the Node object's InternalIP.
	NodeIP netip.Addr
	// Kubeconfig is a kubeconfig path; empty means $KUBECONFIG, then in-cluster.
	Kubeconfig string
	// CNISocket is where the plugin reaches the agent.
	CNISocket string
	// StateDir keeps what must survive a restart (address allocations).
	StateDir string
	// PendingDeleteDir is where the plugin spools DELs made while the agent was down.
	PendingDeleteDir string
	// Routing selects vxlan, native or auto routing, the VXLAN VNI and port, and an MTU override.
	Routing routing.Config
	// DefaultPoolV4 and DefaultPoolV6 are created when the cluster has no IPPool at all
	// (an invalid prefix means: do not create one of that family).
	DefaultPoolV4, DefaultPoolV6 netip.Prefix
	// ReconcileInterval is how often allocations are compared with the API's pods to reclaim
	// addresses whose DEL never came.
	ReconcileInterval time.Duration
	// CNIConfDir, when set, is where the agent writes twill's CNI config once it can serve ADDs,
	// so the kubelet reports the node Ready only when pod networking works (as Flannel and Calico do).
	CNIConfDir string
	// Policy turns network policy enforcement on (NetworkPolicy, and ClusterNetworkPolicy
	// when its CRD is installed); when on, ADD answers only once the pod's policy is in force.
	Policy bool
	// PolicyEstablished says what a policy change does to established connections it no
	// longer allows: EstablishedKeep (they run on) or EstablishedReset (cut at once).
	PolicyEstablished string
	// MetricsAddress is where /metrics is served (host:port); empty: not served.
	MetricsAddress string
	// Services turns service load balancing on: this node serves ClusterIPs, NodePorts,
	// external and load balancer IPs itself (kube-proxy's job) through ServiceDatapath.
	Services bool
	// ServiceDatapath programs the services when Services is on; nil: the nftables one
	// (table inet twill-services) in the agent's network namespace.
	ServiceDatapath datapath.ServiceReconciler
	// Datapath selects how forwarded packets are carried: DatapathNFTables (the kernel's
	// routing and netfilter for every packet), DatapathEBPF (established connections take the
	// eBPF fast path; the agent fails if it cannot load) or DatapathAuto (eBPF where it loads).
	Datapath string
}

// The datapaths Config.Datapath selects.
const (
	DatapathAuto     = "auto"
	DatapathNFTables = "nftables"
	DatapathEBPF     = "ebpf"
)

// DefaultConfig returns the settings a plain install uses.
func DefaultConfig() Config {
	return Config{
		CNISocket:         cniproto.DefaultSocket,
		StateDir:          "/var/lib/twill",
		PendingDeleteDir:  "/var/lib/twill/pending-del",
		Routing:           routing.Config{Mode: routing.ModeVXLAN, VNI: 1, Port: 8472},
		DefaultPoolV4:     netip.MustParsePrefix("10.244.0.0/16"),
		ReconcileInterval: time.Minute,
		Policy:            true,
		PolicyEstablished: EstablishedKeep,
		MetricsAddress:    metrics.DefaultAddress,
		Datapath:          DatapathAuto,
	}
}

func (c Config) validate() error {
	if c.NodeName == "" {
		return fmt.Errorf("node name is required (--node-name, or $NODE_NAME from the downward API)")
	}
	if c.CNISocket == "" || c.StateDir == "" || c.PendingDeleteDir == "" {
		return fmt.Errorf("cni socket, state dir and pending-delete dir must be set")
	}
	if c.ReconcileInterval <= 0 {
		return fmt.Errorf("reconcile interval must be positive, got %s", c.ReconcileInterval)
	}
	switch c.PolicyEstablished {
	case EstablishedKeep, EstablishedReset:
	default:
		return fmt.Errorf("policy-established %q: want %q or %q", c.PolicyEstablished, EstablishedKeep, EstablishedReset)
	}
	switch c.Datapath {
	case "", DatapathAuto, DatapathNFTables, DatapathEBPF: // "": auto
	default:
		return fmt.Errorf("datapath %q: want %q, %q or %q", c.Datapath, DatapathAuto, DatapathNFTables, DatapathEBPF)
	}
	return nil
}
