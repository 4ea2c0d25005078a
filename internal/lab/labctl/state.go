// Package labctl runs the lab as a service of the machine: `twill lab up` starts a supervisor
// process (`twill lab serve`, detached in its own session) that builds the lab's images, brings
// up the cluster (package cluster with kubelets from package kubenode), serves a kubeconfig
// usable from the machine, and tears everything down when signalled by `twill lab down`.
//
// Why a supervisor: every lab process dies with the program that started it (parent-death
// signal, so a crashed test never leaves a lab behind); a lab that outlives the `up` command
// therefore needs a long-lived parent. The supervisor and the commands talk through files in
// the lab directory ($TWILL_LAB_DIR, default /var/lib/twill-lab): its pid, its log and a state
// file it rewrites as the lab comes up.
package labctl

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Defaults of the lab's identity and home.
const (
	// DefaultName prefixes the lab's namespaces, cgroups and containerd sockets. It differs
	// from the test prefixes ("twt-", "twe"), whose stale-namespace cleanup must never touch a
	// user's lab.
	DefaultName = "twill-lab"
	DefaultDir  = "/var/lib/twill-lab"
	// EnvDir overrides DefaultDir.
	EnvDir = "TWILL_LAB_DIR"
)

// Phases of the lab in the state file.
const (
	PhaseStarting = "starting"
	PhaseReady    = "ready"
	PhaseFailed   = "failed"
	PhaseStopping = "stopping"
)

// State is what the supervisor publishes about the lab.
type State struct {
	Phase   string `json:"phase"`
	Error   string `json:"error,omitempty"`
	Name    string `json:"name"`
	Routing string `json:"routing"`
	// Services says who serves Services: twill or kube-proxy.
	Services string `json:"services,omitempty"`
	// Kubeconfig is usable from the machine (its server is the supervisor's proxy on
	// 127.0.0.1); Kubectl is the pinned kubectl the lab was built with.
	Kubeconfig string      `json:"kubeconfig,omitempty"`
	Kubectl    string      `json:"kubectl,omitempty"`
	Server     string      `json:"server,omitempty"`
	Nodes      []NodeState `json:"nodes,omitempty"`
	// DNS says how the cluster DNS came up: "answering at IP" or why it is not.
	DNS string `json:"dns,omitempty"`
	// Took is how long the lab took to come up.
	Took string `json:"took,omitempty"`
}

// NodeState describes one lab node.
type NodeState struct {
	Name   string `json:"name"`
	IP     string `json:"ip"`
	Subnet string `json:"subnet"`
	// Enter are nsenter's arguments that put a program into the node's namespaces.
	Enter []string `json:"enter"`
	// Kubelet says whether the node runs a kubelet (the control-plane node does not).
	Kubelet bool `json:"kubelet"`
}

// Paths of the lab's files under its directory.
type Paths struct{ Dir string }

// DirFromEnv is $TWILL_LAB_DIR, else DefaultDir.
func DirFromEnv() string {
	if d := os.Getenv(EnvDir); d != "" {
		return d
	}
	return DefaultDir
}

func (p Paths) pidFile() string   { return filepath.Join(p.Dir, "supervisor.pid") }
func (p Paths) stateFile() string { return filepath.Join(p.Dir, "state.json") }

// Log is the supervisor's log (the lab's progress, then its events).
func (p Paths) Log() string { return filepath.Join(p.Dir, "supervisor.log") }

// Kubeconfig is where the supervisor writes the kubeconfig for the machine.
func (p Paths) Kubeconfig() string { return filepath.Join(p.Dir, "kubeconfig") }

// clusterDir holds the cluster's files (control plane, nodes, logs).
func (p Paths) clusterDir() string { return filepath.Join(p.Dir, "cluster") }

// ReadState reads the state file; a lab that was never started has none (fs.ErrNotExist).
func (p Paths) ReadState() (State, error) {
	var s State
	data, err := os.ReadFile(p.stateFile())
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return s, fmt.Errorf("reading %s: %w", p.stateFile(), err)
	}
	return s, nil
}

// writeState replaces the state file atomically, so a reader never sees half of it.
func (p Paths) writeState(s State) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := p.stateFile() + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, p.stateFile())
}

// Supervisor returns the pid of the running supervisor, or 0 when none runs. A pid file whose
// process is gone, or is another program now, does not count.
func (p Paths) Supervisor() int {
	data, err := os.ReadFile(p.pidFile())
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0
	}
	if syscall.Kill(pid, 0) != nil {
		return 0
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmdline), "lab\x00serve\x00") || isZombie(pid) {
		return 0
	}
	return pid
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

func (p Paths) writePid() error {
	return os.WriteFile(p.pidFile(), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
