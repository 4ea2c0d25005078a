package kubenode

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/twill-net/twill/internal/lab/upstream"
)

// PauseImage is the name the lab's sandbox image is imported under. It is fully qualified
// because containerd resolves a short name under docker.io, which the lab cannot reach; the
// registry host exists nowhere, so nothing can ever be pulled in its place.
const PauseImage = "registry.twill.local/pause:3.10"

// pausePackage is the Go package of the sandbox program.
const pausePackage = "github.com/twill-net/twill/internal/lab/kubenode/pause"

// Image is a container image built by the lab, ready to be imported into a node's containerd.
type Image struct {
	// Name is the image's fully qualified reference.
	Name string
	// Archive is the image as a tar archive in the format of `docker save`, which
	// `ctr images import` reads.
	Archive string
}

// BuildPauseImage compiles the pause program (static, no cgo) and packs it as PauseImage into
// an archive under dir.
func BuildPauseImage(ctx context.Context, dir string) (Image, error) {
	root, err := upstream.RepoRoot()
	if err != nil {
		return Image{}, err
	}
	rootfs := filepath.Join(dir, "pause-rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return Image{}, err
	}
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(rootfs, "pause"), pausePackage)
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return Image{}, fmt.Errorf("building the pause program: %w\n%s", err, out)
	}
	return WriteImage(filepath.Join(dir, "pause.tar"), PauseImage, rootfs, []string{"/pause"})
}

// WriteImage packs the directory rootfs as the only layer of an image for this machine's
// platform, named ref (fully qualified) and running entrypoint, into the archive at path.
func WriteImage(path, ref, rootfs string, entrypoint []string) (Image, error) {
	tag, err := name.NewTag(ref)
	if err != nil {
		return Image{}, fmt.Errorf("image name %q: %w", ref, err)
	}
	layer, err := layerFromDir(rootfs)
	if err != nil {
		return Image{}, err
	}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		OS:           "linux",
		Architecture: runtime.GOARCH,
		Config:       v1.Config{Entrypoint: entrypoint},
	})
	if err != nil {
		return Image{}, err
	}
	if img, err = mutate.AppendLayers(img, layer); err != nil {
		return Image{}, fmt.Errorf("image %s: %w", ref, err)
	}
	if err := tarball.WriteToFile(path, tag, img); err != nil {
		return Image{}, fmt.Errorf("writing image %s to %s: %w", ref, path, err)
	}
	return Image{Name: ref, Archive: path}, nil
}

// layerFromDir makes an image layer holding the files under dir with their modes (the
// standard library's tar writer walks the tree; the layer is kept in memory: lab images are
// small).
func layerFromDir(dir string) (v1.Layer, error) {
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	if err := w.AddFS(os.DirFS(dir)); err != nil {
		return nil, fmt.Errorf("packing %s: %w", dir, err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("packing %s: %w", dir, err)
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
}
