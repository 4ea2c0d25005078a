package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"

	"github.com/twill-net/twill/internal/lab/cluster"
)

// The CNI suite measures pod network setup and teardown as a container runtime sees it: the
// wall time of libcni's AddNetworkList and DelNetworkList, which includes exec'ing the plugin,
// everything the plugin does (for twill: the round trip to the agent, IPAM and the netlink
// plumbing) and libcni's own result cache. It runs twill on a one-node lab cluster and, in the
// same run, Debian's bridge + host-local (the "flannel host-gw" shape) on a node namespace of
// its own, alternating between the two so that load elsewhere on the machine hits both alike.

// CNIOptions configure the CNI suite.
type CNIOptions struct {
	// Pods is how many pods the sequential phase wires one after another, and how many the
	// concurrent phase wires at once (default 50).
	Pods int
	// Rounds repeats both phases (default 4), so each figure has Pods*Rounds samples.
	Rounds int
	// TwillBin is the twill binary the agent runs as (default: this program); twill-cni must
	// be in the same directory.
	TwillBin string
	// UpstreamBin holds etcd and kube-apiserver (default: upstream.Binaries).
	UpstreamBin string
	// BaselinePluginDir holds Debian's bridge and host-local plugins (default /usr/lib/cni).
	BaselinePluginDir string
	// Progress receives what the suite is doing (nil: nothing).
	Progress io.Writer
}

// Defaults of CNIOptions.
const (
	DefaultCNIPods   = 50
	DefaultCNIRounds = 4
	// cniLabPrefix starts the suite's cluster name, and so its namespaces: the benchmarks' own
	// prefix (hack/cleanup removes leftovers of killed runs by it), plus a random suffix per
	// run, so that a benchmark never collides with a test run or another benchmark.
	cniLabPrefix = "twb"
	// referencePluginDir is where Debian's containernetworking-plugins installs.
	referencePluginDir = "/usr/lib/cni"
)

func runCNISuite(ctx context.Context, opts Options) (Report, error) {
	return RunCNI(ctx, CNIOptions{Rounds: opts.Iterations, Progress: opts.Progress})
}

// RunCNI starts its own lab cluster and baseline node, measures, removes everything it made
// and returns the report.
func RunCNI(ctx context.Context, opts CNIOptions) (rep Report, err error) {
	if opts.Pods <= 0 {
		opts.Pods = DefaultCNIPods
	}
	if opts.Rounds <= 0 {
		opts.Rounds = DefaultCNIRounds
	}
	if opts.BaselinePluginDir == "" {
		opts.BaselinePluginDir = referencePluginDir
	}
	progress := opts.Progress
	if progress == nil {
		progress = io.Discard
	}
	if err := requirePlugins(opts.BaselinePluginDir, "bridge", "host-local"); err != nil {
		return rep, fmt.Errorf("the baseline needs Debian's reference plugins (apt-get install containernetworking-plugins): %w", err)
	}
	run, err := prepareLabRun(ctx, opts.TwillBin, opts.UpstreamBin, "cni", cniLabPrefix, "etcd", "kube-apiserver")
	if err != nil {
		return rep, err
	}
	twillBin, cniDir, dir, name := run.twillBin, run.cniDir, run.dir, run.name
	opts.UpstreamBin = run.upstreamBin
	// Cleanup runs even when ctx was cancelled (Ctrl-C): nothing of the lab may stay behind.
	cleanupCtx := context.WithoutCancel(ctx)
	defer run.keepLogsOnFailure(&err, func(format string, args ...any) {
		fmt.Fprintf(progress, "bench cni: "+format+"\n", args...)
	})

	fmt.Fprintf(progress, "bench cni: starting a one-node lab cluster %s (etcd, kube-apiserver, twill agent)\n", name)
	lab, err := cluster.Start(ctx, cluster.Options{
		Name:        name,
		Dir:         dir,
		UpstreamBin: opts.UpstreamBin,
		TwillBin:    twillBin,
		CNIBin:      cniDir,
		Nodes:       []cluster.NodeSpec{{Name: "n1"}},
		Log:         slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return rep, fmt.Errorf("starting the lab cluster: %w", err)
	}
	defer func() { err = errors.Join(err, lab.Close()) }()

	fmt.Fprintf(progress, "bench cni: creating %d pods and their sandboxes on twill and on the baseline\n", opts.Pods)
	twill, err := newTwillTarget(ctx, lab, lab.Node("n1"), opts.Pods)
	if twill != nil {
		defer func() { err = errors.Join(err, twill.close(cleanupCtx)) }()
	}
	if err != nil {
		return rep, err
	}
	baseline, err := newBaselineTarget(name, dir, opts.BaselinePluginDir, opts.Pods)
	if baseline != nil {
		defer func() { err = errors.Join(err, baseline.close(cleanupCtx)) }()
	}
	if err != nil {
		return rep, err
	}

	samples, err := measure(ctx, progress, opts.Rounds, twill, baseline)
	if err != nil {
		if ctx.Err() != nil {
			return rep, fmt.Errorf("interrupted (%w); the last error: %w", context.Cause(ctx), err)
		}
		return rep, err
	}
	cond := cniConditions{nodes: 1, pods: opts.Pods, rounds: opts.Rounds, cores: runtime.NumCPU()}
	return Report{Suite: "cni", Measurements: cniMeasurements(samples[0], samples[1], cond)}, nil
}

// measure runs every round on both targets, alternating which goes first, and returns their
// samples in the order given.
func measure(ctx context.Context, progress io.Writer, rounds int, targets ...*cniTarget) ([]cniSamples, error) {
	for _, t := range targets {
		// Untimed: the first exec of a plugin reads it from disk, and twill's first ADD on a
		// node may claim its first address block from the API; neither is a pod's steady state.
		if err := t.warmUp(ctx); err != nil {
			return nil, err
		}
	}
	samples := make([]cniSamples, len(targets))
	for r := range rounds {
		order := make([]int, len(targets))
		for i := range order {
			order[i] = i
			if r%2 == 1 {
				order[i] = len(targets) - 1 - i
			}
		}
		fmt.Fprintf(progress, "bench cni: round %d/%d\n", r+1, rounds)
		for _, i := range order {
			if err := targets[i].sequential(ctx, 2*r, &samples[i]); err != nil {
				return nil, err
			}
		}
		for _, i := range order {
			if err := targets[i].concurrent(ctx, 2*r+1, &samples[i]); err != nil {
				return nil, err
			}
		}
	}
	return samples, nil
}

// twillBinaries finds the twill binary and the directory holding twill-cni beside it.
func twillBinaries(twill string) (bin, cniDir string, err error) {
	if twill == "" {
		if twill, err = os.Executable(); err != nil {
			return "", "", fmt.Errorf("finding this program: %w", err)
		}
	}
	cniDir = filepath.Dir(twill)
	if err := requirePlugins(cniDir, "twill-cni"); err != nil {
		return "", "", fmt.Errorf("twill-cni must sit next to %s (build both with `make build`, i.e. go build -o bin/ ./cmd/twill ./cmd/twill-cni, and run bin/twill): %w", twill, err)
	}
	return twill, cniDir, nil
}

// requirePlugins checks that dir holds the named executables.
func requirePlugins(dir string, names ...string) error {
	for _, n := range names {
		path := filepath.Join(dir, n)
		info, err := os.Stat(path)
		if err != nil {
			return err
		}
		if info.IsDir() || info.Mode().Perm()&0o111 == 0 {
			return fmt.Errorf("%s is not an executable file", path)
		}
	}
	return nil
}
