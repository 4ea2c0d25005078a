package kubenode

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// CleanupStale removes what the nodes of a lab whose network namespaces start with prefix left
// on the machine when their program died without Close. The node programs it started died with
// it (parent-death signal), but containerd's shims and the pods' processes do not, and the
// namespace files, the mounts that keep them and the cgroups stay: it kills those processes,
// releases the namespaces (the kernel then drops every mount made inside the nodes) and removes
// the cgroups. prefix must not be empty: it is what keeps other labs safe.
func CleanupStale(prefix string) error {
	if prefix == "" {
		return errors.New("kubenode.CleanupStale: empty prefix would match every lab")
	}
	nsFiles, err := staleNamespaceFiles(prefix)
	if err != nil {
		return err
	}
	var mntIDs []uint64
	for _, f := range nsFiles {
		var st unix.Stat_t
		if strings.HasSuffix(f, mntSuffix) && unix.Stat(f, &st) == nil {
			mntIDs = append(mntIDs, st.Ino)
		}
	}
	groups := staleCgroups(prefix)
	var errs []error
	errs = append(errs, killUntilNone("stale lab nodes "+prefix+"*", func() []int {
		var pids []int
		for _, id := range mntIDs {
			pids = append(pids, processesInMountNamespace(id)...)
		}
		for _, g := range groups {
			pids = append(pids, g.pids()...)
		}
		return append(pids, processesMentioning(containerdSocketDir+prefix)...)
	}))
	dirs := map[string]bool{}
	for _, f := range nsFiles {
		if err := unix.Unmount(f, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", f, err))
		}
		errs = append(errs, removeIfExists(f))
		dirs[filepath.Dir(f)] = true
	}
	// The directory that held them is a private bind of itself; it goes once empty.
	for dir := range dirs {
		if entries, err := os.ReadDir(dir); err == nil && len(entries) == 0 {
			if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				errs = append(errs, fmt.Errorf("unmounting %s: %w", dir, err))
			}
		}
	}
	for _, g := range groups {
		errs = append(errs, g.remove())
	}
	return errors.Join(errs...)
}

// staleNamespaceFiles lists the mounted namespace files of nodes whose network namespace starts
// with prefix.
func staleNamespaceFiles(prefix string) ([]string, error) {
	mounts, err := readMounts()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range mounts {
		base := filepath.Base(m.point)
		if m.fstype == "nsfs" && strings.HasPrefix(base, prefix) &&
			(strings.HasSuffix(base, mntSuffix) || strings.HasSuffix(base, utsSuffix)) {
			out = append(out, m.point)
		}
	}
	return out, nil
}

// staleCgroups finds the node cgroups of the lab, wherever they were made: under the cgroup of
// the program that made them, which is not this one's. It looks a few levels deep in the
// hierarchy of the first controller (every node cgroup is made in all of them).
func staleCgroups(prefix string) []*nodeCgroups {
	hierarchies, err := cgroupHierarchies()
	if err != nil || len(hierarchies) == 0 {
		return nil
	}
	var out []*nodeCgroups
	root := hierarchies[0].mount
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() || path == root {
			return nil
		}
		rel := strings.TrimPrefix(path, root)
		if strings.HasPrefix(d.Name(), cgroupPrefix+prefix) {
			out = append(out, &nodeCgroups{path: rel, hierarchies: hierarchies})
			return fs.SkipDir
		}
		if strings.Count(rel, "/") >= 4 {
			return fs.SkipDir
		}
		return nil
	})
	return out
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// namespaceDirName is the directory of a node's namespace files, bound onto itself (private)
// before they are made.
const namespaceDirName = "ns"

// UnmountNamespaceDirs releases the namespace directories of the nodes under dir that no
// longer hold a namespace (CleanupStale released those): a supervisor killed between binding
// that directory onto itself and binding the namespaces there leaves the bind alone, which
// CleanupStale cannot tell by name. Such a bind is the lab's own directory shown at itself,
// so unmounting it loses nothing.
func UnmountNamespaceDirs(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	mounts, err := readMounts()
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range mounts {
		if filepath.Base(m.point) != namespaceDirName || !strings.HasPrefix(m.point, abs+"/") {
			continue
		}
		if hasMountBelow(mounts, m.point) {
			continue // a namespace is still bound there: not this function's to release
		}
		if err := unix.Unmount(m.point, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", m.point, err))
		}
	}
	return errors.Join(errs...)
}

func hasMountBelow(mounts []mount, dir string) bool {
	for _, m := range mounts {
		if strings.HasPrefix(m.point, dir+"/") {
			return true
		}
	}
	return false
}
