package kubenode

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupHierarchy is one mounted cgroup hierarchy: a v1 controller set or the v2 tree.
type cgroupHierarchy struct {
	mount  string
	v2     bool
	cpuset bool // v1 cpuset: a new group has no CPUs or memory nodes until given its parent's
}

// nodeCgroups is a lab node's cgroup (the kubelet's cgroupRoot) made in every hierarchy, so
// that each node's pods are accounted apart, and everything the node ran can be found and
// killed at the end, even processes that re-parented to init (containerd's shims, containers).
type nodeCgroups struct {
	// path is the node's cgroup, the same under every hierarchy's mount point.
	path        string
	hierarchies []cgroupHierarchy
}

// cgroupPrefix starts the name of every node's cgroup, followed by the node's network namespace.
const cgroupPrefix = "twill-"

// daemonsGroup is the child of a node's cgroup its containerd and kubelet run in (containerd's
// shims inherit it).
const daemonsGroup = "daemons"

// newNodeCgroups makes the cgroup leaf under this process's own memory cgroup in every
// hierarchy. Nesting under our own memory cgroup keeps the lab's memory charged where the
// machine charges this program's.
func newNodeCgroups(leaf string) (*nodeCgroups, error) {
	hierarchies, err := cgroupHierarchies()
	if err != nil {
		return nil, err
	}
	if len(hierarchies) == 0 {
		return nil, errors.New("no cgroup hierarchy is mounted")
	}
	base, err := ownMemoryCgroup()
	if err != nil {
		return nil, err
	}
	cg := &nodeCgroups{path: filepath.Join(base, leaf), hierarchies: hierarchies}
	if err := cg.ensure(cg.path); err != nil {
		return cg, err
	}
	return cg, cg.ensure(filepath.Join(cg.path, daemonsGroup))
}

// ensure creates path (and its missing parents) in every hierarchy.
func (cg *nodeCgroups) ensure(path string) error {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	for i := range parts {
		rel := "/" + strings.Join(parts[:i+1], "/")
		for _, h := range cg.hierarchies {
			dir := filepath.Join(h.mount, rel)
			err := os.Mkdir(dir, 0o755)
			if errors.Is(err, fs.ErrExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("creating cgroup %s: %w", dir, err)
			}
			if h.cpuset {
				for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
					v, err := os.ReadFile(filepath.Join(filepath.Dir(dir), f))
					if err != nil {
						return fmt.Errorf("reading the parent's %s: %w", f, err)
					}
					if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
						return fmt.Errorf("setting %s of %s: %w", f, dir, err)
					}
				}
			}
		}
	}
	return nil
}

// join moves pid into the node's daemons group in every v1 hierarchy (or the v2 tree when the
// machine has only that).
func (cg *nodeCgroups) join(pid int) error {
	onlyV2 := len(cg.hierarchies) == 1 && cg.hierarchies[0].v2
	for _, h := range cg.hierarchies {
		if h.v2 && !onlyV2 {
			continue // hybrid mode: the v1 controllers do the accounting
		}
		procs := filepath.Join(h.mount, cg.path, daemonsGroup, "cgroup.procs")
		if err := os.WriteFile(procs, []byte(strconv.Itoa(pid)), 0o644); err != nil {
			return fmt.Errorf("moving %d into %s: %w", pid, procs, err)
		}
	}
	return nil
}

// pids lists every process in the node's cgroup tree, in any hierarchy.
func (cg *nodeCgroups) pids() []int {
	var pids []int
	for _, h := range cg.hierarchies {
		_ = filepath.WalkDir(filepath.Join(h.mount, cg.path), func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			data, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
			if err != nil {
				return nil
			}
			for _, f := range strings.Fields(string(data)) {
				if pid, err := strconv.Atoi(f); err == nil && !slices.Contains(pids, pid) {
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// remove deletes the node's cgroup tree (the kubelet's and runc's groups under it included),
// deepest first, then the parents that newNodeCgroups may have made (the base exists only in the
// memory hierarchy) as long as they are empty: a parent still holding another node's cgroup or
// a process (ours, in the memory hierarchy) cannot be removed, and stays. A group whose last
// process is still exiting is busy for a moment, so removing the node's own is retried a while.
func (cg *nodeCgroups) remove() error {
	var errs []error
	for _, h := range cg.hierarchies {
		errs = append(errs, removeCgroupTree(h.mount, cg.path))
	}
	return errors.Join(errs...)
}

// removeCgroupTree removes the cgroup at path under mount with its descendants, then its empty
// ancestors.
func removeCgroupTree(mount, path string) error {
	deadline := time.Now().Add(10 * time.Second)
	var dirs []string
	_ = filepath.WalkDir(filepath.Join(mount, path), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	// A child comes after its parent in the walk: remove in reverse order.
	var errs []error
	for _, dir := range slices.Backward(dirs) {
		errs = append(errs, rmdirRetry(dir, deadline))
	}
	for parent := filepath.Dir(path); parent != "/" && parent != "."; parent = filepath.Dir(parent) {
		if syscall.Rmdir(filepath.Join(mount, parent)) != nil {
			break
		}
	}
	return errors.Join(errs...)
}

func rmdirRetry(dir string, deadline time.Time) error {
	for {
		err := syscall.Rmdir(dir)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("removing cgroup %s: %w", dir, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cgroupHierarchies lists the mounted cgroup hierarchies.
func cgroupHierarchies() ([]cgroupHierarchy, error) {
	mounts, err := readMounts()
	if err != nil {
		return nil, err
	}
	var out []cgroupHierarchy
	for _, m := range mounts {
		if m.root != "/" {
			continue
		}
		switch m.fstype {
		case "cgroup":
			out = append(out, cgroupHierarchy{mount: m.point, cpuset: slices.Contains(m.superOpts, "cpuset")})
		case "cgroup2":
			out = append(out, cgroupHierarchy{mount: m.point, v2: true})
		}
	}
	return out, nil
}

// ownMemoryCgroup is this process's cgroup in the memory hierarchy (v1), or in the v2 tree.
func ownMemoryCgroup() (string, error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	v2 := "/"
	for line := range strings.Lines(string(data)) {
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if slices.Contains(strings.Split(parts[1], ","), "memory") {
			return parts[2], nil
		}
		if parts[0] == "0" {
			v2 = parts[2]
		}
	}
	return v2, nil
}
