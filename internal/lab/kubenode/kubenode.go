// Package kubenode turns a lab node (a network namespace on the lab's underlay) into a real
// Kubernetes node: its own mount and UTS namespaces (hostname, and the directories a node's
// programs expect, see namespaces.go), its own cgroup, Debian's containerd and runc, and the
// pinned upstream kubelet, registered with the lab's control plane as system:node:NAME. Pods the
// scheduler places on it are run by containerd, which calls the CNI plugin from the node's
// /opt/cni/bin with the config in its /etc/cni/net.d: so twill-cni is driven by a real runtime,
// as in production. The twill agent of the node runs inside the same namespaces (Command), as
// a DaemonSet pod with the host's paths would.
//
// Images come from no registry: the lab builds them (BuildPauseImage, WriteImage) and imports
// them into each node's containerd under fully qualified names.
package kubenode

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/twill-net/twill/internal/lab/controlplane"
	"github.com/twill-net/twill/internal/lab/underlay"
)

// CNIConfDir and CNIBinDir are where, inside the node, containerd looks for CNI configs and
// plugins: where the agent writes twill's config and where twill-cni is installed.
const (
	CNIConfDir = "/etc/cni/net.d"
	CNIBinDir  = "/opt/cni/bin"
)

// Config describes a node to start.
type Config struct {
	// Node is the lab node: its network namespace, name (also the hostname and the Node
	// object's name) and underlay address (the kubelet's --node-ip).
	Node *underlay.Node
	// ControlPlane issues the kubelet's credentials and CA.
	ControlPlane *controlplane.ControlPlane
	// Dir is the node's own directory: its namespaces, containerd's and the kubelet's state,
	// logs/ (one file per program), CNI dirs. It must not be shared with another node.
	Dir string
	// BinDir holds the kubelet (see package upstream).
	BinDir string
	// SharedDirs are machine directories the node's programs see at the same path, read-write
	// (the lab's directory with the agent's files, the directory of the twill binary). Dir is
	// always shared. The rest of the machine's files are seen read-only-in-effect: writes land
	// in the node's overlay and vanish with it.
	SharedDirs []string
	// CNIPlugins are programs installed into the node's CNI bin dir: plugin name -> path on the
	// machine (say "twill-cni", and Debian's "portmap" and "loopback": containerd itself calls
	// loopback for every pod).
	CNIPlugins map[string]string
	// SandboxImage is containerd's pod sandbox image (default PauseImage); Images are imported
	// before the kubelet starts, and must include it.
	SandboxImage string
	Images       []Image
	// KubeProxy runs the upstream kube-proxy (from BinDir) on the node, so Services work; off,
	// the node has none, as a node of a cluster that does without would.
	KubeProxy bool
	// KubeProxyMode is kube-proxy's mode: KubeProxyNFTables (default, "") or KubeProxyIPTables
	// (which needs Debian's iptables, the nft-based one, on the machine).
	KubeProxyMode string
	Log           *slog.Logger
}

// Node is a running Kubernetes node; Close removes all of it.
type Node struct {
	Name string
	// Dir is the node's directory (Config.Dir).
	Dir string
	// ContainerdSocket is the path of its containerd's socket inside the node. It is named
	// after the node's network namespace, so the command line of each containerd shim (which
	// carries it, and which outlives containerd) tells which node the shim belongs to. It is
	// not under Dir: a unix socket path has at most 108 bytes.
	ContainerdSocket string

	cfg                 Config
	ns                  *nodeNamespaces
	cgroups             *nodeCgroups
	containerd, kubelet *daemon
	kubeProxy           *daemon
}

// Start lays out the node, starts containerd, imports the images and starts the kubelet (and
// kube-proxy, with Config.KubeProxy). It returns once they run; the Node object appears a
// moment later and turns Ready when
// the node's CNI config exists (the twill agent writes it once it serves). ctx bounds the start
// only. On failure nothing is left.
func Start(ctx context.Context, cfg Config) (n *Node, err error) {
	if cfg.Node == nil || cfg.ControlPlane == nil || cfg.Dir == "" || cfg.BinDir == "" {
		return nil, errors.New("kubenode: Config needs Node, ControlPlane, Dir and BinDir")
	}
	if cfg.SandboxImage == "" {
		cfg.SandboxImage = PauseImage
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, err
	}
	n = &Node{Name: cfg.Node.Name, Dir: dir, cfg: cfg,
		ContainerdSocket: containerdSocketDir + filepath.Base(cfg.Node.Netns) + ".sock"}
	defer func() {
		if err != nil {
			err = errors.Join(fmt.Errorf("kubenode %s: %w", n.Name, err), n.Close())
			n = nil
		}
	}()
	start := time.Now()
	if err := n.prepareDirs(); err != nil {
		return n, err
	}
	if n.cgroups, err = newNodeCgroups(cgroupPrefix + filepath.Base(cfg.Node.Netns)); err != nil {
		return n, err
	}
	binds, err := n.binds()
	if err != nil {
		return n, err
	}
	if n.ns, err = createNamespaces(ctx, n.Dir, filepath.Base(cfg.Node.Netns), n.Name, binds); err != nil {
		return n, err
	}
	for _, cidr := range []netip.Prefix{cfg.ControlPlane.ServiceCIDR(), LoadBalancerRange} {
		if err := addServiceRoute(cfg.Node, cidr); err != nil {
			return n, err
		}
	}
	if err := n.startContainerd(ctx); err != nil {
		return n, err
	}
	for _, img := range cfg.Images {
		if err := n.ImportImage(ctx, img); err != nil {
			return n, err
		}
	}
	if err := n.startKubelet(); err != nil {
		return n, err
	}
	if cfg.KubeProxy {
		if err := n.startKubeProxy(); err != nil {
			return n, err
		}
	}
	cfg.Log.Info("node runtime started", "node", n.Name, "took", time.Since(start).Round(time.Millisecond))
	return n, nil
}

// The node's directories on the machine, relative to Dir, and where the node sees them.
var nodeDirs = []bind{
	{"cni/net.d", CNIConfDir},
	{"cni/bin", CNIBinDir},
	{"cni/cache", "/var/lib/cni"}, // libcni's result cache, as containerd uses it
	{"kubelet", "/var/lib/kubelet"},
	{"containerd", "/var/lib/containerd"},
	{"log/pods", "/var/log/pods"},
	{"log/containers", "/var/log/containers"},
}

func (n *Node) prepareDirs() error {
	for _, d := range append(slices.Clone(nodeDirs), bind{source: "logs"}) {
		if err := os.MkdirAll(filepath.Join(n.Dir, d.source), 0o755); err != nil {
			return err
		}
	}
	for plugin, path := range n.cfg.CNIPlugins {
		if err := copyFile(path, filepath.Join(n.Dir, "cni/bin", plugin), 0o755); err != nil {
			return fmt.Errorf("installing CNI plugin %s: %w", plugin, err)
		}
	}
	return nil
}

// binds lists what the node's mount namespace shows: the shared directories at their own
// path, the node's directories where its programs look, and its copies of the kernel settings
// the kubelet checks.
func (n *Node) binds() ([]bind, error) {
	var binds []bind
	for _, d := range sharedRoots(append([]string{n.Dir}, n.cfg.SharedDirs...)) {
		binds = append(binds, bind{source: d, target: d})
	}
	for _, d := range nodeDirs {
		binds = append(binds, bind{source: filepath.Join(n.Dir, d.source), target: d.target})
	}
	sysctls, err := sysctlBinds(filepath.Join(n.Dir, "sysctl"))
	return append(binds, sysctls...), err
}

// sharedRoots returns the absolute, distinct directories of dirs, leaving out any inside
// another (binding the outer one shows it).
func sharedRoots(dirs []string) []string {
	var abs []string
	for _, d := range dirs {
		if a, err := filepath.Abs(d); err == nil {
			abs = append(abs, filepath.Clean(a))
		}
	}
	slices.Sort(abs)
	abs = slices.Compact(abs)
	var out []string
	for _, d := range abs {
		if len(out) > 0 && (d == out[len(out)-1] || strings.HasPrefix(d, out[len(out)-1]+"/")) {
			continue
		}
		out = append(out, d)
	}
	return out
}

// Command prepares prog to run on the node: in its network, mount and UTS namespaces. As with
// underlay.Node.Command, the process gets SIGKILL when the thread that starts it ends: start
// long-lived processes with underlay.StartCommand.
func (n *Node) Command(ctx context.Context, prog string, args ...string) *exec.Cmd {
	nsArgs := append(n.ns.enter(n.cfg.Node.Netns), "--", prog)
	cmd := exec.CommandContext(ctx, "nsenter", append(nsArgs, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// AgentArgs are the flags the node's twill agent needs beyond the usual ones: where to write
// twill's CNI config once it serves.
func (n *Node) AgentArgs() []string { return []string{"--cni-conf-dir=" + CNIConfDir} }

// LogDir is where the node's programs log (containerd.log, kubelet.log).
func (n *Node) LogDir() string { return filepath.Join(n.Dir, "logs") }

// Close stops kube-proxy, the kubelet and containerd, kills everything else the node ran (containerd's
// shims and the pods' processes, which outlive containerd; any program started with Command),
// releases the node's namespaces (and with them every mount made in the node) and removes its
// cgroups. Dir stays, logs included. It may be called more than once.
func (n *Node) Close() error {
	var errs []error
	errs = append(errs, n.kubeProxy.stop(), n.kubelet.stop(), n.containerd.stop())
	errs = append(errs, n.killAll())
	if n.ns != nil {
		errs = append(errs, n.ns.remove())
	}
	if n.cgroups != nil {
		errs = append(errs, n.cgroups.remove())
	}
	return errors.Join(errs...)
}

// killAll kills, until none is left, every process in the node's mount namespace or cgroup, and
// every shim of the node's containerd (named by its socket on their command line), should one
// have escaped both.
func (n *Node) killAll() error {
	return killUntilNone("node "+n.Name, func() []int {
		var pids []int
		if n.ns != nil {
			pids = append(pids, n.ns.pids()...)
		}
		if n.cgroups != nil {
			pids = append(pids, n.cgroups.pids()...)
		}
		return append(pids, processesMentioning(n.ContainerdSocket)...)
	})
}

// killUntilNone sends SIGKILL to the processes list returns until it returns none (but this
// program, and zombies: those are dead already, their parent (init, for re-parented ones) reaps
// them).
func killUntilNone(what string, list func() []int) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		pids := slices.DeleteFunc(list(), func(pid int) bool { return pid == os.Getpid() || isZombie(pid) })
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes of %s survive SIGKILL: %v", what, pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// processesMentioning lists the live processes whose command line contains s.
func processesMentioning(s string) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), s) {
			out = append(out, pid)
		}
	}
	return out
}

func isZombie(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	if i := strings.LastIndexByte(string(stat), ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] == 'Z'
	}
	return false
}

func copyFile(src, dst string, mode fs.FileMode) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, mode)
}
