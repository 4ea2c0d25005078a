package kubenode

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// A node's file system view: its own mount namespace whose root is an overlay of the machine's
// root file system (read through, written to a tmpfs that dies with the namespace), with
// /proc, /sys and /dev of the machine, a /run of its own, and per-node directories bound where
// the kubelet, containerd and CNI expect their files. So every program on the node uses its
// usual paths (/etc/cni/net.d, /opt/cni/bin, /var/lib/kubelet, /var/lib/containerd, /run/...)
// and nothing is written to the machine's own directories; mount points are made in the
// overlay, not on the machine. The namespaces are kept by bind mounts of their files under the
// node's directory, so each node program is started with nsenter into them.

// Suffixes of the files that hold a node's namespaces.
const (
	mntSuffix = ".mnt"
	utsSuffix = ".uts"
)

// bind is a host path shown at target inside the node.
type bind struct {
	source, target string
}

// nodeNamespaces are a node's persistent mount and UTS namespaces.
type nodeNamespaces struct {
	dir      string // holds mnt and uts, a private mount point so that namespaces can be bound there
	mnt, uts string
	// mntID identifies the mount namespace (the inode of its nsfs file), to find its processes.
	mntID uint64
}

// createNamespaces makes the node's UTS namespace with hostname and its mount namespace laid out
// as described above, with binds applied in order (a bind's source is a host path; its target a
// path in the node, a directory or an existing file).
// The namespace files are named after id (the node's network namespace), so that CleanupStale
// can tell a dead lab's from others.
func createNamespaces(ctx context.Context, dir, id, hostname string, binds []bind) (ns *nodeNamespaces, err error) {
	ns = &nodeNamespaces{dir: filepath.Join(dir, namespaceDirName)}
	ns.mnt, ns.uts = filepath.Join(ns.dir, id+mntSuffix), filepath.Join(ns.dir, id+utsSuffix)
	defer func() {
		if err != nil {
			err = errors.Join(err, ns.remove())
			ns = nil
		}
	}()
	if err := os.MkdirAll(ns.dir, 0o755); err != nil {
		return ns, err
	}
	// A namespace file can only be bound on a mount that does not propagate into that very
	// namespace, hence a private mount of the directory that holds them.
	if err := unix.Mount(ns.dir, ns.dir, "", unix.MS_BIND, ""); err != nil {
		return ns, fmt.Errorf("binding %s onto itself: %w", ns.dir, err)
	}
	if err := unix.Mount("", ns.dir, "", unix.MS_PRIVATE, ""); err != nil {
		return ns, fmt.Errorf("making %s private: %w", ns.dir, err)
	}
	for _, f := range []string{ns.mnt, ns.uts} {
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			return ns, err
		}
	}
	root := filepath.Join(dir, "root")
	for _, d := range []string{"rw", "merged"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return ns, err
		}
	}
	script, err := layoutScript(hostname, root, binds)
	if err != nil {
		return ns, err
	}
	// Private propagation: no mount made in the node shows on the machine, and the node does not
	// pick up (and hold on to) mounts made later on the machine.
	cmd := exec.CommandContext(ctx, "unshare", "--mount="+ns.mnt, "--uts="+ns.uts, "--propagation", "private",
		"sh", "-ec", script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return ns, fmt.Errorf("laying out the node's mount namespace: %w\n%s", err, out)
	}
	var st unix.Stat_t
	if err := unix.Stat(ns.mnt, &st); err != nil {
		return ns, err
	}
	ns.mntID = st.Ino
	return ns, nil
}

// layoutScript is the shell script run in the new namespaces that sets the hostname, builds the
// node's root under root/merged and makes it the namespace's root (pivot_root).
func layoutScript(hostname, root string, binds []bind) (string, error) {
	rw, merged := filepath.Join(root, "rw"), filepath.Join(root, "merged")
	// Overlay options are separated by commas and colons.
	if strings.ContainsAny(rw, ",:") {
		return "", fmt.Errorf("node directory %s: overlayfs cannot take a path with ',' or ':'", root)
	}
	var s strings.Builder
	line := func(args ...string) {
		for i, a := range args {
			if i > 0 {
				s.WriteByte(' ')
			}
			s.WriteString(shellQuote(a))
		}
		s.WriteByte('\n')
	}
	line("hostname", hostname)
	// The overlay's upper layer is a tmpfs: overlayfs refuses an upper directory inside its
	// lower layer, and the node's scratch writes should vanish with it anyway.
	line("mount", "-t", "tmpfs", "-o", "mode=0755", "twill-node", rw)
	line("mkdir", rw+"/upper", rw+"/work")
	line("mount", "-t", "overlay", "-o", "lowerdir=/,upperdir="+rw+"/upper,workdir="+rw+"/work", "twill-node", merged)
	// Not `ip netns exec`'s fresh /sys: the machine's /sys keeps the cgroup mounts runc needs.
	for _, m := range []string{"/proc", "/sys", "/dev"} {
		line("mount", "--rbind", m, merged+m)
	}
	line("mount", "-t", "tmpfs", "-o", "mode=0755", "twill-node-run", merged+"/run")
	for _, b := range binds {
		target := merged + b.target
		st, err := os.Stat(b.source)
		if err != nil {
			return "", fmt.Errorf("bind source: %w", err)
		}
		if st.IsDir() {
			line("mkdir", "-p", target)
		}
		line("mount", "--bind", b.source, target)
	}
	line("mkdir", merged+"/.twill-oldroot")
	line("cd", merged)
	line("pivot_root", ".", ".twill-oldroot")
	line("umount", "-l", "/.twill-oldroot")
	line("rmdir", "/.twill-oldroot")
	return s.String(), nil
}

// enter returns nsenter's arguments that put a program into the node (its network namespace at
// netns, and these namespaces).
func (ns *nodeNamespaces) enter(netns string) []string {
	return []string{"--net=" + netns, "--mount=" + ns.mnt, "--uts=" + ns.uts}
}

// pids lists the processes in the node's mount namespace.
func (ns *nodeNamespaces) pids() []int {
	return processesInMountNamespace(ns.mntID)
}

// processesInMountNamespace lists the processes in the mount namespace with inode id.
func processesInMountNamespace(id uint64) []int {
	want := fmt.Sprintf("mnt:[%d]", id)
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid := 0
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid <= 0 {
			continue
		}
		if link, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns", "mnt")); err == nil && link == want {
			out = append(out, pid)
		}
	}
	return out
}

// remove releases the namespaces: once no process is left in them, the kernel frees them and,
// with the mount namespace, every mount made inside the node (overlay, binds, containerd's
// snapshots, the pods' network namespace files).
func (ns *nodeNamespaces) remove() error {
	var errs []error
	for _, f := range []string{ns.mnt, ns.uts, ns.dir} {
		if err := unix.Unmount(f, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", f, err))
		}
	}
	if err := os.RemoveAll(ns.dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=,:+@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
