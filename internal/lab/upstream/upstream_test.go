package upstream

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestRepoRootIsThisCheckout(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "hack", "build-upstream.sh")); err != nil {
		t.Errorf("RepoRoot() = %s, which has no build script: %v", root, err)
	}
}

func TestBinDirFromTheEnvironment(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "etcd"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvBinDir, dir)
	got, err := Binaries(t.Context(), "etcd")
	if err != nil || got != dir {
		t.Errorf("Binaries(etcd) = %q, %v; want %q", got, err, dir)
	}
	if _, err := Binaries(t.Context(), "etcd", "kube-apiserver"); err == nil {
		t.Error("Binaries accepted a directory without kube-apiserver")
	}
}

func TestSkipBuildReportsNotBuilt(t *testing.T) {
	t.Setenv(EnvBinDir, "")
	t.Setenv(EnvSkipBuild, "1")
	t.Setenv(EnvCache, t.TempDir())
	_, err := Binaries(t.Context(), "etcd")
	if !errors.Is(err, ErrNotBuilt) {
		t.Errorf("Binaries with an empty cache and %s=1: %v, want ErrNotBuilt", EnvSkipBuild, err)
	}
}

// Built computes the script's cache directory itself; when etcd is in the cache, the script
// (which then returns at once) must print the same directory.
func TestBuiltAgreesWithTheScript(t *testing.T) {
	t.Setenv(EnvBinDir, "")
	t.Setenv(EnvSkipBuild, "")
	dir, err := Built("etcd")
	if errors.Is(err, ErrNotBuilt) {
		t.Skipf("skipped: etcd is not built yet, so the script would build it (%v)", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	fromScript, err := binaries(t.Context(), io.Discard, "etcd")
	if err != nil {
		t.Fatal(err)
	}
	if fromScript != dir {
		t.Errorf("the build script uses %s, Built computed %s", fromScript, dir)
	}
}

// CoreDNS is keyed apart: a coredns built from another pin (its stamp differs) does not count
// as built, one with the current stamp does.
func TestCoreDNSCountsOnlyWhenBuiltFromThePin(t *testing.T) {
	t.Setenv(EnvBinDir, "")
	t.Setenv(EnvSkipBuild, "1")
	t.Setenv(EnvCache, t.TempDir())
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := cacheDir(root)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "coredns"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	stamp := filepath.Join(dir, ".coredns.key")
	if err := os.WriteFile(stamp, []byte("000000000000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Built("coredns"); !errors.Is(err, ErrNotBuilt) {
		t.Errorf("Built(coredns) with a stale stamp: %v, want ErrNotBuilt", err)
	}
	key, err := pinKey(root, coreDNSPinFiles...)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stamp, []byte(key+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := Built("coredns"); err != nil || got != dir {
		t.Errorf("Built(coredns) with the current stamp = %q, %v; want %q", got, err, dir)
	}
}
