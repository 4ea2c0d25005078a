package underlay

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RunDir is where named network namespaces are bind-mounted, the same place `ip netns` uses, so
// `ip netns list` and `ip netns exec` see the lab's namespaces.
const RunDir = "/run/netns"

// NetnsPath is the path of the named network namespace name.
func NetnsPath(name string) string { return filepath.Join(RunDir, name) }

// makeRunDirShared makes RunDir a shared mount point, as `ip netns add` does, so that a namespace
// mounted there later is also visible to processes that live in their own mount namespace (a
// lab node's kubelet or containerd).
func makeRunDirShared() error {
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", RunDir, err)
	}
	err := unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("making %s shared: %w", RunDir, err)
	}
	// EINVAL: not a mount point yet. Bind it onto itself (recursively, so namespaces already
	// mounted there stay visible), then make it shared.
	if err := unix.Mount(RunDir, RunDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mounting %s onto itself: %w", RunDir, err)
	}
	if err := unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("making %s shared: %w", RunDir, err)
	}
	return nil
}

// createNetns creates the persistent network namespace name under RunDir without changing the
// network namespace of the calling goroutine's thread.
func createNetns(name string) error {
	if err := makeRunDirShared(); err != nil {
		return err
	}
	if _, err := os.Stat(NetnsPath(name)); err == nil {
		return fmt.Errorf("network namespace %s already exists (a leftover? see CleanupStale): %w", name, fs.ErrExist)
	}
	errc := make(chan error, 1)
	go func() {
		// netns.NewNamed moves the current thread into the new namespace, so it runs on a
		// locked thread that is moved back afterwards. Only if that fails does the thread stay
		// locked, for the runtime to discard when this goroutine ends. Letting it be discarded
		// every time would be simpler but is worse: the runtime cannot discard the main thread
		// (it parks it, still in the lab's namespace, for the life of the program), and a
		// discarded thread takes with it the parent-death signal of every process it started.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("opening the current network namespace: %w", err)
			return
		}
		defer orig.Close()
		created, err := netns.NewNamed(name)
		if err != nil {
			errc <- err
			return
		}
		created.Close()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("returning to the original network namespace: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		return fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	return nil
}

// deleteNetns unmounts and removes the named namespace; a missing one is not an error. The
// kernel frees the namespace (and the links in it) once no process or open handle holds it.
func deleteNetns(name string) error {
	path := NetnsPath(name)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmounting network namespace %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", path, err)
	}
	return nil
}

// CleanupStale removes the named network namespaces whose name starts with prefix: the leftovers
// of a lab whose process was killed before it could call Close. Processes the lab started die
// with it (they run with a parent-death signal), so removing the namespaces frees everything,
// links included. prefix must not be empty: it is what keeps other namespaces safe.
func CleanupStale(prefix string) error {
	if prefix == "" {
		return errors.New("CleanupStale: empty prefix would match every namespace")
	}
	entries, err := os.ReadDir(RunDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing %s: %w", RunDir, err)
	}
	var errs []error
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			errs = append(errs, deleteNetns(e.Name()))
		}
	}
	return errors.Join(errs...)
}

// CreateNetns creates a persistent network namespace (a lab pod's, say) and returns its path.
func CreateNetns(name string) (string, error) {
	return NetnsPath(name), createNetns(name)
}

// DeleteNetns removes a namespace made by CreateNetns; a missing one is not an error.
func DeleteNetns(name string) error { return deleteNetns(name) }
