package kubenode

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// A node's namespace directory left bound onto itself with no namespace in it (its lab's
// supervisor killed in between) is released; one that still holds a bound namespace file is
// not.
func TestUnmountNamespaceDirs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root (bind mounts)")
	}
	dir := t.TempDir()
	empty := filepath.Join(dir, "nodes", "a", "kube", namespaceDirName)
	held := filepath.Join(dir, "nodes", "b", "kube", namespaceDirName)
	nsFile := filepath.Join(held, "net")
	for _, d := range []string{empty, held} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount(d, d, "", unix.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = unix.Unmount(d, unix.MNT_DETACH) })
	}
	if err := os.WriteFile(nsFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("/proc/self/ns/net", nsFile, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(nsFile, unix.MNT_DETACH) })

	if err := UnmountNamespaceDirs(dir); err != nil {
		t.Fatal(err)
	}
	mounts, err := readMounts()
	if err != nil {
		t.Fatal(err)
	}
	var points []string
	for _, m := range mounts {
		points = append(points, m.point)
	}
	if slices.Contains(points, empty) {
		t.Errorf("%s is still mounted", empty)
	}
	if !slices.Contains(points, held) || !slices.Contains(points, nsFile) {
		t.Errorf("%s (holding a namespace) was unmounted", held)
	}
}
