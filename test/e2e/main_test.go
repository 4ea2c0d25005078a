// Package e2e tests pod networking end to end: real twill agents in node namespaces against a
// real etcd and kube-apiserver, pods wired by the real twill-cni through libcni, and real
// packets between them.
package e2e

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/twill-net/twill/internal/lab/cluster"
	"github.com/twill-net/twill/internal/lab/upstream"
)

// labPrefix starts the name of every namespace these tests create; hack/test.sh removes
// leftovers of killed runs by it. Each run adds a random suffix, so that runs side by side (two
// developers' checkouts on one machine) never touch each other's namespaces.
const labPrefix = "twe"

var (
	lab       *cluster.Cluster
	setupErr  error
	skipWhy   string
	twillBin  string
	keepFiles = flag.Bool("keep", false, "keep the test's working directory (logs) after the run")
)

func TestMain(m *testing.M) {
	flag.Parse()
	if os.Geteuid() != 0 {
		skipWhy = "skipped: end-to-end tests need root to create network namespaces (run the suite as root, as CI does)"
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "twill-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Minute)
	setupErr = setUp(ctx, dir)
	cancel()
	code := m.Run()
	if lab != nil {
		if err := lab.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "closing the lab:", err)
			code = 1
		}
	}
	if code != 0 || *keepFiles {
		fmt.Fprintln(os.Stderr, "e2e: logs kept in", dir)
	} else {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

func setUp(ctx context.Context, dir string) error {
	labName := fmt.Sprintf("%s%04x", labPrefix, rand.IntN(1<<16))
	upstreamBin, err := upstream.Binaries(ctx, "etcd", "kube-apiserver")
	if err != nil {
		return err
	}
	bin := filepath.Join(dir, "bin")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin+"/", "github.com/twill-net/twill/cmd/twill", "github.com/twill-net/twill/cmd/twill-cni")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("building twill: %w", err)
	}
	twillBin = filepath.Join(bin, "twill")
	lab, err = cluster.Start(ctx, cluster.Options{
		Name:        labName,
		Dir:         dir,
		UpstreamBin: upstreamBin,
		TwillBin:    twillBin,
		CNIBin:      bin,
		Nodes:       []cluster.NodeSpec{{Name: "n1", Subnet: 0}, {Name: "n2", Subnet: 0}, {Name: "n3", Subnet: 1}},
		AgentArgs:   []string{"--reconcile-interval", "2s", "--default-pool-ipv6", "fd00:10:244::/56", "--log-level", "debug"},
		Log:         slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	return err
}

// needLab skips or fails the test when the lab is not there.
func needLab(t *testing.T) *cluster.Cluster {
	t.Helper()
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
	if setupErr != nil {
		t.Fatalf("setting up the lab: %v", setupErr)
	}
	return lab
}
