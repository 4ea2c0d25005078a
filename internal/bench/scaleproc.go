package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// The scale suite finds the lab's processes by their command lines, as `twill lab down` does:
// every program of the lab names the lab's directory in its arguments, and a node's programs
// name the node's directory (".../nodes/NODE/...") or, for the twill agent, --node-name. This
// works whichever process started them (the lab's supervisor runs apart from the benchmark).

// Components the suite reports.
const (
	compKubelet    = "kubelet"
	compContainerd = "containerd"
	compAgent      = "twill_agent"
	compKubeProxy  = "kube_proxy"
	compSupervisor = "lab_supervisor"
)

// controlPlaneComponents are the lab's control-plane programs, by the name reported.
var controlPlaneComponents = map[string]string{
	"etcd":                    "etcd",
	"kube-apiserver":          "kube_apiserver",
	"kube-controller-manager": "kube_controller_manager",
	"kube-scheduler":          "kube_scheduler",
}

// labProcess is one program of the lab.
type labProcess struct {
	pid       int
	component string
	// node is the lab node a node program runs on ("" for the control plane).
	node string
}

var nodeDirPattern = regexp.MustCompile(`/nodes/([^/\x00]+)/`)

// classifyProcess says which lab component the command line (argv, NUL-separated as in
// /proc/PID/cmdline) is, when it names labDir (or is the supervisor of lab labName, which
// has the directory in its environment only); ok is false for anything else (including the
// nsenter and shim processes between them).
func classifyProcess(cmdline []byte, labDir, labName string) (component, node string, ok bool) {
	if bytes.Contains(cmdline, []byte("\x00lab\x00serve\x00")) && bytes.Contains(cmdline, []byte("\x00--name\x00"+labName+"\x00")) {
		return compSupervisor, "", true
	}
	if !bytes.Contains(cmdline, []byte(labDir)) {
		return "", "", false
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	prog := filepath.Base(args[0])
	nodeOf := func() string {
		if m := nodeDirPattern.FindStringSubmatch(string(cmdline)); m != nil {
			return m[1]
		}
		return ""
	}
	switch {
	case prog == "kubelet":
		return compKubelet, nodeOf(), true
	case prog == "containerd":
		return compContainerd, nodeOf(), true
	case prog == "kube-proxy":
		return compKubeProxy, nodeOf(), true
	case len(args) > 1 && args[1] == "agent":
		for i, a := range args {
			if a == "--node-name" && i+1 < len(args) {
				return compAgent, args[i+1], true
			}
			if v, found := strings.CutPrefix(a, "--node-name="); found {
				return compAgent, v, true
			}
		}
		return compAgent, "", true
	}
	if c, found := controlPlaneComponents[prog]; found {
		return c, "", true
	}
	return "", "", false
}

// findLabProcesses lists the lab's programs running now.
func findLabProcesses(labDir, labName string) ([]labProcess, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []labProcess
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(cmdline) == 0 {
			continue // gone, or a kernel thread
		}
		if c, node, ok := classifyProcess(cmdline, labDir, labName); ok {
			out = append(out, labProcess{pid: pid, component: c, node: node})
		}
	}
	return out, nil
}

// parseVmRSS returns VmRSS from /proc/PID/status text, in bytes.
func parseVmRSS(status []byte) (int64, error) {
	s := bufio.NewScanner(bytes.NewReader(status))
	for s.Scan() {
		rest, found := strings.CutPrefix(s.Text(), "VmRSS:")
		if !found {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("VmRSS line %q: want \"N kB\"", s.Text())
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("VmRSS line %q: %w", s.Text(), err)
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("no VmRSS line (a kernel thread or a zombie)")
}

// rssSample is the resident memory of each component: component -> one value per process
// (per node for node programs), in MiB.
type rssSample map[string][]float64

// sampleRSS reads the RSS of every lab program now.
func sampleRSS(labDir, labName string) (rssSample, []labProcess, error) {
	procs, err := findLabProcesses(labDir, labName)
	if err != nil {
		return nil, nil, err
	}
	out := rssSample{}
	for _, p := range procs {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid))
		if err != nil {
			continue // exited meanwhile
		}
		rss, err := parseVmRSS(status)
		if err != nil {
			continue
		}
		out[p.component] = append(out[p.component], float64(rss)/(1<<20))
	}
	return out, procs, nil
}
