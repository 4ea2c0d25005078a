package bench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/twill-net/twill/internal/lab/cluster"
	"github.com/twill-net/twill/internal/lab/underlay"
)

// cniTarget is one CNI network as the runtime of one node drives it, with the pod sandboxes
// it wires. The sandboxes live for the whole run; each round gives them new container IDs, as
// a runtime does for every new sandbox.
type cniTarget struct {
	name string
	// node is the namespace libcni runs in: the plugin it execs inherits it, so whatever the
	// plugin does to "the host" it does to this lab namespace, never to the machine's.
	node *underlay.Node
	cni  *libcni.CNIConfig
	list *libcni.NetworkConfigList
	pods []*libcni.RuntimeConf
	// removeAll deletes every sandbox and whatever else the target made.
	removeAll func(context.Context) error
}

// cniSamples are the latencies of one target.
type cniSamples struct {
	addSequential, delSequential, execSequential []time.Duration
	addConcurrent, delConcurrent, execConcurrent []time.Duration
}

// newTwillTarget creates the Pod objects and sandboxes of pods on a node of the lab cluster.
func newTwillTarget(ctx context.Context, lab *cluster.Cluster, node *cluster.Node, pods int) (*cniTarget, error) {
	cni, list := node.CNI()
	t := &cniTarget{name: "twill", node: node.Node, cni: cni, list: list}
	var made []*cluster.Pod
	t.removeAll = func(ctx context.Context) error {
		var errs []error
		for _, p := range made {
			errs = append(errs, lab.Remove(ctx, p))
		}
		return errors.Join(errs...)
	}
	for i := range pods {
		name := fmt.Sprintf("bench-%03d", i)
		obj, err := lab.CreatePodObject(ctx, node, name)
		if err != nil {
			return t, err
		}
		p, err := lab.NewSandbox(node, name, string(obj.UID))
		if err != nil {
			return t, errors.Join(err, lab.DeletePodObject(ctx, name))
		}
		made = append(made, p)
		t.pods = append(t.pods, p.RuntimeConf())
	}
	return t, nil
}

// newBaselineTarget makes a node namespace of its own for the reference plugins, and the pod
// sandboxes. The bridge (a name of this run) and its subnet exist only inside that namespace,
// and host-local keeps its leases under dir, so nothing outside the run is touched.
func newBaselineTarget(name, dir, pluginDir string, pods int) (*cniTarget, error) {
	nodeNS := name + "-bl"
	path, err := underlay.CreateNetns(nodeNS)
	if err != nil {
		return nil, err
	}
	var sandboxes []string
	t := &cniTarget{name: "bridge+host-local", node: &underlay.Node{Name: nodeNS, Netns: path}}
	t.removeAll = func(context.Context) error {
		var errs []error
		for _, s := range sandboxes {
			errs = append(errs, underlay.DeleteNetns(s))
		}
		// The bridge and every host veth go with the node's namespace.
		return errors.Join(append(errs, underlay.DeleteNetns(nodeNS))...)
	}
	conf, err := baselineConfList(name+"-br", filepath.Join(dir, "host-local"))
	if err != nil {
		return t, err
	}
	if t.list, err = libcni.NetworkConfFromBytes(conf); err != nil {
		return t, fmt.Errorf("the baseline's CNI config does not parse: %w", err)
	}
	t.cni = libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, filepath.Join(dir, "baseline-cni-cache"), nil)
	for i := range pods {
		sb := fmt.Sprintf("%s-b-%03d", name, i)
		sbPath, err := underlay.CreateNetns(sb)
		if err != nil {
			return t, err
		}
		sandboxes = append(sandboxes, sb)
		t.pods = append(t.pods, &libcni.RuntimeConf{NetNS: sbPath, IfName: "eth0",
			Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", cluster.PodNamespace}, {"K8S_POD_NAME", fmt.Sprintf("bench-%03d", i)}}})
	}
	return t, nil
}

// baselineSubnet is the baseline pods' subnet; it exists only inside the baseline's namespaces.
const baselineSubnet = "10.250.0.0/16"

// baselineConfList is the network flannel hands its delegate on a node (bridge, the node as
// default gateway, hairpin, no masquerade: flannel does that itself), with host-local IPAM.
// Debian's plugins speak CNI up to 1.0.0.
func baselineConfList(bridge, dataDir string) ([]byte, error) {
	if len(bridge) > 15 {
		return nil, fmt.Errorf("bridge name %q is longer than the kernel's 15 characters", bridge)
	}
	return json.Marshal(map[string]any{
		"cniVersion": "1.0.0",
		"name":       "twill-bench-baseline",
		"plugins": []any{map[string]any{
			"type":             "bridge",
			"bridge":           bridge,
			"isDefaultGateway": true,
			"hairpinMode":      true,
			"ipMasq":           false,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": baselineSubnet}}},
				"dataDir": dataDir,
			},
		}},
	})
}

// benchContainerID is the container ID of pod i in round r of a target: new for every round,
// as a runtime gives every sandbox a new ID, and never the same on two targets.
func benchContainerID(target string, pod, round int) string {
	sum := sha256.Sum256([]byte(target + "/" + strconv.Itoa(pod) + "/" + strconv.Itoa(round)))
	return hex.EncodeToString(sum[:])
}

func (t *cniTarget) setRound(round int) {
	for i, rt := range t.pods {
		rt.ContainerID = benchContainerID(t.name, i, round)
	}
}

// add runs one ADD and returns its wall time; the result must give the pod an address.
func (t *cniTarget) add(ctx context.Context, rt *libcni.RuntimeConf) (time.Duration, error) {
	start := time.Now()
	res, err := t.cni.AddNetworkList(ctx, t.list, rt)
	took := time.Since(start)
	if err != nil {
		return took, fmt.Errorf("%s: ADD of %s: %w", t.name, rt.NetNS, err)
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return took, fmt.Errorf("%s: ADD of %s: reading the result: %w", t.name, rt.NetNS, err)
	}
	if len(r.IPs) == 0 {
		return took, fmt.Errorf("%s: ADD of %s gave no address", t.name, rt.NetNS)
	}
	return took, nil
}

// del runs one DEL and returns its wall time.
func (t *cniTarget) del(ctx context.Context, rt *libcni.RuntimeConf) (time.Duration, error) {
	start := time.Now()
	err := t.cni.DelNetworkList(ctx, t.list, rt)
	took := time.Since(start)
	if err != nil {
		return took, fmt.Errorf("%s: DEL of %s: %w", t.name, rt.NetNS, err)
	}
	return took, nil
}

// exec runs the plugin with CNI VERSION: it starts, prints its versions and exits, which is
// the floor under every ADD and DEL of a plugin that the runtime execs.
func (t *cniTarget) exec(ctx context.Context, _ *libcni.RuntimeConf) (time.Duration, error) {
	plugin := t.list.Plugins[0].Network.Type
	start := time.Now()
	_, err := t.cni.GetVersionInfo(ctx, plugin)
	took := time.Since(start)
	if err != nil {
		return took, fmt.Errorf("%s: VERSION of %s: %w", t.name, plugin, err)
	}
	return took, nil
}

type cniOp func(context.Context, *libcni.RuntimeConf) (time.Duration, error)

// inNode runs op from a thread inside the target's node namespace.
func (t *cniTarget) inNode(ctx context.Context, op cniOp, rt *libcni.RuntimeConf) (took time.Duration, err error) {
	doErr := t.node.Do(func() error {
		took, err = op(ctx, rt)
		return nil
	})
	return took, errors.Join(err, doErr)
}

// warmUp wires and unwires the first pod once, untimed.
func (t *cniTarget) warmUp(ctx context.Context) error {
	t.setRound(-1)
	if _, err := t.inNode(ctx, t.add, t.pods[0]); err != nil {
		return errors.Join(err, t.delAll(ctx))
	}
	_, err := t.inNode(ctx, t.del, t.pods[0])
	return err
}

// sequential wires every pod one after another, then unwires them one after another, then
// execs the plugin as many times.
func (t *cniTarget) sequential(ctx context.Context, round int, s *cniSamples) error {
	t.setRound(round)
	for _, rt := range t.pods {
		took, err := t.inNode(ctx, t.add, rt)
		if err != nil {
			return errors.Join(err, t.delAll(ctx))
		}
		s.addSequential = append(s.addSequential, took)
	}
	for _, rt := range t.pods {
		took, err := t.inNode(ctx, t.del, rt)
		if err != nil {
			return errors.Join(err, t.delAll(ctx))
		}
		s.delSequential = append(s.delSequential, took)
	}
	for _, rt := range t.pods {
		took, err := t.inNode(ctx, t.exec, rt)
		if err != nil {
			return err
		}
		s.execSequential = append(s.execSequential, took)
	}
	return nil
}

// concurrent wires every pod at once, then unwires them all at once, then execs the plugin as
// many times at once.
func (t *cniTarget) concurrent(ctx context.Context, round int, s *cniSamples) error {
	t.setRound(round)
	took, err := t.burst(ctx, t.add)
	if err != nil {
		return errors.Join(err, t.delAll(ctx))
	}
	s.addConcurrent = append(s.addConcurrent, took...)
	if took, err = t.burst(ctx, t.del); err != nil {
		return errors.Join(err, t.delAll(ctx))
	}
	s.delConcurrent = append(s.delConcurrent, took...)
	if took, err = t.burst(ctx, t.exec); err != nil {
		return err
	}
	s.execConcurrent = append(s.execConcurrent, took...)
	return nil
}

// burst runs op for every pod at once: each goroutine first gets its thread into the node
// namespace, then all are released together, so the timed calls truly overlap.
func (t *cniTarget) burst(ctx context.Context, op cniOp) ([]time.Duration, error) {
	took := make([]time.Duration, len(t.pods))
	errs := make([]error, len(t.pods))
	start := make(chan struct{})
	var ready, done sync.WaitGroup
	ready.Add(len(t.pods))
	for i, rt := range t.pods {
		done.Go(func() {
			entered := false
			errs[i] = t.node.Do(func() error {
				entered = true
				ready.Done()
				<-start
				var err error
				took[i], err = op(ctx, rt)
				return err
			})
			if !entered {
				ready.Done()
			}
		})
	}
	ready.Wait()
	close(start)
	done.Wait()
	return took, errors.Join(errs...)
}

// delAll unwires every pod of the current round (after a failure; errors of pods never wired
// are expected and ignored: DEL is idempotent anyway).
func (t *cniTarget) delAll(ctx context.Context) error {
	ctx = context.WithoutCancel(ctx)
	for _, rt := range t.pods {
		_, _ = t.inNode(ctx, t.del, rt)
	}
	return nil
}

// close removes the sandboxes and Pod objects (after a last DEL of each, for a run that
// stopped half-way).
func (t *cniTarget) close(ctx context.Context) error {
	if t.cni != nil {
		_ = t.delAll(ctx)
	}
	return t.removeAll(ctx)
}
