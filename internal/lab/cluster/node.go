package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/twill-net/twill/internal/lab/underlay"
)

// Node is a lab node with its agent.
type Node struct {
	*underlay.Node
	cluster *Cluster
	// Dir holds the node's agent state, spool and log; Socket is its CNI socket.
	Dir, Socket, StateDir, PendingDir string
	// AgentKubeconfig is the agent's kubeconfig: a token of the twill-agent ServiceAccount,
	// bound to the ClusterRole of deploy/rbac, never the admin's.
	AgentKubeconfig string
	// ExtraArgs are added to the cluster's AgentArgs for this node's agent.
	ExtraArgs []string

	agent   *exec.Cmd
	done    chan struct{}
	runtime NodeRuntime // nil unless the cluster has kubelets
}

// AgentLog is the path of the agent's log (appended across restarts).
func (n *Node) AgentLog() string { return filepath.Join(n.Dir, "agent.log") }

// StartAgent starts the node's twill agent in the node's namespace.
func (n *Node) StartAgent() error {
	if n.agent != nil {
		return fmt.Errorf("agent on %s is already running", n.Name)
	}
	args := []string{"agent",
		"--node-name", n.Name,
		"--kubeconfig", n.AgentKubeconfig,
		"--cni-socket", n.Socket,
		"--state-dir", n.StateDir,
		"--pending-delete-dir", n.PendingDir,
	}
	command := n.Command
	if n.runtime != nil {
		command = n.runtime.Command
		args = append(args, n.runtime.AgentArgs()...)
	}
	args = append(append(args, n.cluster.opts.AgentArgs...), n.ExtraArgs...)
	log, err := os.OpenFile(n.AgentLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := command(context.Background(), n.cluster.opts.TwillBin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := underlay.StartCommand(cmd); err != nil {
		return fmt.Errorf("starting agent on %s: %w", n.Name, err)
	}
	n.agent, n.done = cmd, make(chan struct{})
	go func(done chan struct{}) { _ = cmd.Wait(); close(done) }(n.done)
	return nil
}

// closeRuntime stops the node's kubelet and containerd, if it has them, and removes them.
func (n *Node) closeRuntime() error {
	if n.runtime == nil {
		return nil
	}
	err := n.runtime.Close()
	n.runtime = nil
	return err
}

// StopAgent stops the agent gracefully (SIGTERM); no agent running is not an error.
func (n *Node) StopAgent() error { return n.signalAgent(syscall.SIGTERM) }

// KillAgent kills the agent at once (SIGKILL), as a crash would.
func (n *Node) KillAgent() error { return n.signalAgent(syscall.SIGKILL) }

func (n *Node) signalAgent(sig syscall.Signal) error {
	if n.agent == nil {
		return nil
	}
	_ = n.agent.Process.Signal(sig)
	select {
	case <-n.done:
	case <-time.After(15 * time.Second):
		_ = n.agent.Process.Kill()
		<-n.done
	}
	n.agent = nil
	return nil
}

// RestartAgent stops the agent, starts it again with extra flags and waits until it serves.
func (n *Node) RestartAgent(ctx context.Context, extraArgs ...string) error {
	if err := n.StopAgent(); err != nil {
		return err
	}
	n.ExtraArgs = extraArgs
	if err := n.StartAgent(); err != nil {
		return err
	}
	return n.WaitReady(ctx)
}

// WaitReady waits until the agent answers CNI STATUS with success, i.e. it can serve ADDs.
func (n *Node) WaitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cni, list := n.CNI()
	var last error
	for {
		if n.agent == nil {
			return fmt.Errorf("agent on %s is not running", n.Name)
		}
		select {
		case <-n.done:
			return fmt.Errorf("agent on %s exited; its log %s ends:\n%s", n.Name, n.AgentLog(), tail(n.AgentLog(), 20))
		default:
		}
		if last = cni.GetStatusNetworkList(ctx, list); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("agent on %s not ready: %w (last: %v); its log %s ends:\n%s",
				n.Name, ctx.Err(), last, n.AgentLog(), tail(n.AgentLog(), 20))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// CNI returns the libcni client a runtime on this node would use, and twill's network config
// for this node (twill-cni alone, CNI 1.1.0, pointed at this node's agent).
func (n *Node) CNI() (*libcni.CNIConfig, *libcni.NetworkConfigList) {
	conf := map[string]any{
		"cniVersion": "1.1.0",
		"name":       "twill",
		"plugins": []any{map[string]any{
			"type":             "twill-cni",
			"agentSocket":      n.Socket,
			"pendingDeleteDir": n.PendingDir,
		}},
	}
	data, _ := json.Marshal(conf)
	list, err := libcni.NetworkConfFromBytes(data)
	if err != nil {
		panic(fmt.Sprintf("twill's own CNI config does not parse: %v", err)) // a bug, not input
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{n.cluster.opts.CNIBin}, filepath.Join(n.Dir, "cni-cache"), nil)
	return cni, list
}

func tail(path string, lines int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	end := len(data)
	for i := len(data) - 1; i >= 0 && lines >= 0; i-- {
		if data[i] == '\n' {
			lines--
			if lines < 0 {
				return string(data[i+1 : end])
			}
		}
	}
	return string(data)
}
