package kubenode_test

import (
	"archive/tar"
	"errors"
	"io"
	"runtime"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/twill-net/twill/internal/lab/kubenode"
)

// The pause image archive holds one image under its fully qualified name, for this machine's
// platform, whose entrypoint is an executable /pause.
func TestPauseImageRunsAnExecutablePause(t *testing.T) {
	img, err := kubenode.BuildPauseImage(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if img.Name != kubenode.PauseImage {
		t.Errorf("image name %q, want %q", img.Name, kubenode.PauseImage)
	}
	tag, err := name.NewTag(kubenode.PauseImage)
	if err != nil {
		t.Fatal(err)
	}
	image, err := tarball.ImageFromPath(img.Archive, &tag)
	if err != nil {
		t.Fatalf("the archive has no image %s: %v", kubenode.PauseImage, err)
	}
	cfg, err := image.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s, want linux/%s", cfg.OS, cfg.Architecture, runtime.GOARCH)
	}
	if !slices.Equal(cfg.Config.Entrypoint, []string{"/pause"}) {
		t.Errorf("entrypoint %q, want [/pause]", cfg.Config.Entrypoint)
	}
	layers, err := image.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v; want one", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := tar.NewReader(rc)
	for {
		h, err := files.Next()
		if errors.Is(err, io.EOF) {
			t.Fatal("the layer has no pause program")
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == "pause" {
			if h.Typeflag != tar.TypeReg || h.Mode&0o111 == 0 || h.Size == 0 {
				t.Errorf("pause in the layer: type %c, mode %o, size %d; want an executable file", h.Typeflag, h.Mode, h.Size)
			}
			return
		}
	}
}
