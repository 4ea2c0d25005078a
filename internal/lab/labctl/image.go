package labctl

import (
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/twill-net/twill/internal/lab/kubenode"
	"github.com/twill-net/twill/internal/lab/upstream"
)

// WorkloadImage is the name of the lab's workload image: the twill binary alone, whose
// `netcheck serve|connect` are the server and the prober of `twill connectivity test`. Fully
// qualified, as containerd would look a short name up on docker.io.
const WorkloadImage = "registry.twill.local/twill:dev"

// BuildWorkloadImage packs a static twill binary as WorkloadImage into an archive under dir.
// The image has no libc, so the binary must be static: it is built from the checkout with
// CGO_ENABLED=0, or, outside a checkout, the running binary is used if it is static.
func BuildWorkloadImage(ctx context.Context, dir string) (kubenode.Image, error) {
	rootfs := filepath.Join(dir, "twill-rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return kubenode.Image{}, err
	}
	bin := filepath.Join(rootfs, "twill")
	if root, err := upstream.RepoRoot(); err == nil {
		build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./cmd/twill")
		build.Dir = root
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			return kubenode.Image{}, fmt.Errorf("building a static twill for the workload image: %w\n%s", err, out)
		}
	} else {
		self, err := os.Executable()
		if err != nil {
			return kubenode.Image{}, err
		}
		if !isStatic(self) {
			return kubenode.Image{}, fmt.Errorf("the workload image needs a static twill: run from a checkout, or build twill with CGO_ENABLED=0 (%w)", err)
		}
		data, err := os.ReadFile(self)
		if err != nil {
			return kubenode.Image{}, err
		}
		if err := os.WriteFile(bin, data, 0o755); err != nil {
			return kubenode.Image{}, err
		}
	}
	return kubenode.WriteImage(filepath.Join(dir, "twill.tar"), WorkloadImage, rootfs, []string{"/twill"})
}

// isStatic says whether the ELF program at path needs no dynamic loader.
func isStatic(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return f.Section(".interp") == nil
}
