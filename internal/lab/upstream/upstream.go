// Package upstream locates the upstream programs the lab runs (etcd, kube-apiserver, the kubelet,
// ...): a directory given by the user, or the project's own build of the pinned Go modules made
// by hack/build-upstream.sh, which caches its output and shows progress while it builds.
package upstream

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
)

const (
	// EnvBinDir names a directory that already holds the programs; nothing is built then.
	EnvBinDir = "TWILL_UPSTREAM_BIN"
	// EnvSkipBuild set to "1" forbids building: Binaries returns ErrNotBuilt instead of starting
	// a build of several minutes (for quick test runs that skip what needs the programs).
	EnvSkipBuild = "TWILL_SKIP_UPSTREAM_BUILD"
	// EnvCache is the cache root of the build script (default /var/cache/twill).
	EnvCache = "TWILL_CACHE"

	buildScript = "hack/build-upstream.sh"
	modulePath  = "github.com/twill-net/twill"
)

// ErrNotBuilt says a program is missing and building it was not allowed.
var ErrNotBuilt = errors.New("upstream programs not built")

// Binaries returns a directory holding the named programs (all of them when none is named).
// It honours $TWILL_UPSTREAM_BIN; otherwise it runs hack/build-upstream.sh, whose progress goes
// to stderr and which returns at once when its cache is complete.
func Binaries(ctx context.Context, names ...string) (string, error) {
	return binaries(ctx, os.Stderr, names...)
}

func binaries(ctx context.Context, progress io.Writer, names ...string) (string, error) {
	if dir := os.Getenv(EnvBinDir); dir != "" {
		if err := checkPresent(dir, names); err != nil {
			return "", fmt.Errorf("$%s: %w", EnvBinDir, err)
		}
		return dir, nil
	}
	if os.Getenv(EnvSkipBuild) == "1" {
		return Built(names...)
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "bash", append([]string{filepath.Join(root, buildScript)}, names...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, progress
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %w", buildScript, strings.Join(names, " "), err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	dir := strings.TrimSpace(lines[len(lines)-1])
	if err := checkPresent(dir, names); err != nil {
		return "", fmt.Errorf("%s printed %q: %w", buildScript, dir, err)
	}
	return dir, nil
}

// Built returns the build script's cache directory if it already holds the named programs, and
// ErrNotBuilt otherwise; it never builds. It computes the cache key as the script does (a hash
// of the pinned go.mod/go.sum files and `go version`); a test checks the two agree.
func Built(names ...string) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	dir, err := cacheDir(root)
	if err != nil {
		return "", err
	}
	err = checkPresent(dir, names)
	if err == nil && (len(names) == 0 || slices.Contains(names, "coredns")) {
		err = checkCoreDNSStamp(root, dir)
	}
	if err != nil {
		return "", fmt.Errorf("%w (set %s=<dir>, or unset %s to build them with %s): %w",
			ErrNotBuilt, EnvBinDir, EnvSkipBuild, buildScript, err)
	}
	return dir, nil
}

// checkCoreDNSStamp says whether the coredns in dir was built from the current pin: the build
// script keys CoreDNS apart from the rest (its stamp file, .coredns.key), so that moving the
// CoreDNS pin rebuilds CoreDNS alone.
func checkCoreDNSStamp(root, dir string) error {
	want, err := pinKey(root, coreDNSPinFiles...)
	if err != nil {
		return err
	}
	got, err := os.ReadFile(filepath.Join(dir, ".coredns.key"))
	if err != nil || strings.TrimSpace(string(got)) != want {
		return fmt.Errorf("%s holds no coredns built from the current pin", dir)
	}
	return nil
}

// cacheDir mirrors the key computation of hack/build-upstream.sh.
func cacheDir(root string) (string, error) {
	key, err := pinKey(root, "tools/upstream/go.mod", "tools/upstream/go.sum", "tools/etcd/go.mod", "tools/etcd/go.sum")
	if err != nil {
		return "", err
	}
	cache := os.Getenv(EnvCache)
	if cache == "" {
		cache = "/var/cache/twill"
	}
	return filepath.Join(cache, "upstream", key, "bin"), nil
}

// coreDNSPinFiles are what the build script hashes into CoreDNS's stamp: the module pin and the
// main that picks the plugins.
var coreDNSPinFiles = []string{"tools/coredns/go.mod", "tools/coredns/go.sum", "tools/coredns/main.go"}

// pinKey is the build script's hash of the pin files and `go version`, cut to 12 hex digits.
func pinKey(root string, files ...string) (string, error) {
	h := sha256.New()
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			return "", fmt.Errorf("reading the upstream pins: %w", err)
		}
		h.Write(b)
	}
	goVersion, err := exec.Command("go", "version").Output()
	if err != nil {
		return "", fmt.Errorf("go version: %w", err)
	}
	h.Write(goVersion)
	return hex.EncodeToString(h.Sum(nil))[:12], nil
}

// knownPrograms are what the build script builds when given no name.
var knownPrograms = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl", "coredns"}

func checkPresent(dir string, names []string) error {
	if len(names) == 0 {
		names = knownPrograms
	}
	var missing []string
	for _, name := range names {
		info, err := os.Stat(filepath.Join(dir, name))
		if err != nil || info.IsDir() || info.Mode().Perm()&0o111 == 0 {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s lacks %s", dir, strings.Join(missing, ", "))
	}
	return nil
}

// RepoRoot finds the twill repository: upward from this source file (known when the binary was
// built from a checkout without -trimpath, as tests are), else upward from the working directory.
func RepoRoot() (string, error) {
	var starts []string
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	for _, dir := range starts {
		for {
			if isRepoRoot(dir) {
				return dir, nil
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	return "", fmt.Errorf("twill repository not found from %v (run from a checkout, or set %s)", starts, EnvBinDir)
}

func isRepoRoot(dir string) bool {
	mod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	first, _, _ := strings.Cut(string(mod), "\n")
	if strings.TrimSpace(first) != "module "+modulePath {
		return false
	}
	_, err = os.Stat(filepath.Join(dir, buildScript))
	return err == nil
}
