package kubenode

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// kubeletSysctls are the kernel settings the kubelet insists on (its setupKernelTunables, in
// v1.37), by /proc/sys path. They are global to the machine, not per network namespace, and
// the kubelet would set them on the machine itself (a kernel.panic_on_oops of 1, for one). So
// each node sees a file of its own bound over each of them, holding the value the kubelet
// wants, and the kubelet runs with protectKernelDefaults: had a value not been as it wants, it
// would stop rather than change it.
var kubeletSysctls = map[string]int{
	"vm/overcommit_memory":      1,
	"vm/panic_on_oom":           0,
	"kernel/panic":              10,
	"kernel/panic_on_oops":      1,
	"kernel/keys/root_maxkeys":  1000000,
	"kernel/keys/root_maxbytes": 25000000,
}

// sysctlBinds writes the node's copies of kubeletSysctls under dir and returns their binds.
func sysctlBinds(dir string) ([]bind, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var binds []bind
	for key, value := range kubeletSysctls {
		file := filepath.Join(dir, strings.ReplaceAll(key, "/", "."))
		if err := os.WriteFile(file, []byte(strconv.Itoa(value)+"\n"), 0o644); err != nil {
			return nil, err
		}
		binds = append(binds, bind{source: file, target: "/proc/sys/" + key})
	}
	return binds, nil
}

// ClusterDNS is the address of the lab's cluster DNS Service (kube-dns): the 10th address of the
// control plane's default service range, as kubeadm places it. Pods with dnsPolicy ClusterFirst
// get it as their nameserver.
const ClusterDNS = "10.96.0.10"

// kubeletConfig is the node's KubeletConfiguration.
func (n *Node) kubeletConfig(caFile string) map[string]any {
	return map[string]any{
		"apiVersion":               "kubelet.config.k8s.io/v1beta1",
		"kind":                     "KubeletConfiguration",
		"containerRuntimeEndpoint": "unix://" + n.ContainerdSocket,
		// The machine has cgroup v1 and no systemd; each node has its own cgroup, made in every
		// hierarchy beforehand (the kubelet wants it to exist).
		"cgroupDriver": "cgroupfs",
		"cgroupRoot":   n.cgroups.path,
		"failCgroupV1": false,
		"failSwapOn":   false,
		// A negative score needs CAP_SYS_RESOURCE, which the machine takes from every process.
		"oomScoreAdj":           0,
		"protectKernelDefaults": true,
		"address":               n.cfg.Node.IP.String(),
		"readOnlyPort":          0,
		"healthzBindAddress":    "127.0.0.1",
		"authentication": map[string]any{
			"anonymous": map[string]any{"enabled": false},
			"webhook":   map[string]any{"enabled": true},
			"x509":      map[string]any{"clientCAFile": caFile},
		},
		"authorization": map[string]any{"mode": "Webhook"},
		// Lab images cannot be pulled again: never collect them, and never evict for a disk
		// that only looks full because the machine's disk holds other things.
		"imageGCHighThresholdPercent": 100,
		"imageGCLowThresholdPercent":  99,
		"evictionHard":                map[string]string{"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
		"clusterDomain":               "cluster.local",
		"clusterDNS":                  []string{ClusterDNS},
		"resolvConf":                  "/etc/resolv.conf",
	}
}

// startKubelet writes the kubelet's credentials (a client certificate for system:node:NAME in
// system:nodes, as the Node authorizer expects) and configuration, and starts it. Its node name
// is the node's hostname, which the node's UTS namespace gives.
func (n *Node) startKubelet() error {
	pki := filepath.Join(n.Dir, "pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return err
	}
	ca, err := os.ReadFile(n.cfg.ControlPlane.CAFile())
	if err != nil {
		return fmt.Errorf("reading the lab CA: %w", err)
	}
	caFile := filepath.Join(pki, "ca.crt")
	if err := os.WriteFile(caFile, ca, 0o644); err != nil {
		return err
	}
	kubeconfig := filepath.Join(pki, "kubelet.kubeconfig")
	if err := n.cfg.ControlPlane.WriteKubeconfigFor(kubeconfig, "system:node:"+n.Name, "system:nodes"); err != nil {
		return err
	}
	conf, err := json.MarshalIndent(n.kubeletConfig(caFile), "", "  ")
	if err != nil {
		return err
	}
	confFile := filepath.Join(n.Dir, "kubelet.json")
	if err := os.WriteFile(confFile, conf, 0o644); err != nil {
		return err
	}
	n.kubelet, err = n.startDaemon("kubelet", filepath.Join(n.Dir, "logs", "kubelet.log"),
		n.Command(context.Background(), filepath.Join(n.cfg.BinDir, "kubelet"),
			"--config="+confFile,
			"--kubeconfig="+kubeconfig,
			"--node-ip="+n.cfg.Node.IP.String(),
			"--v=2",
		))
	return err
}
