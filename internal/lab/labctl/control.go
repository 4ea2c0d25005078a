package labctl

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/twill-net/twill/internal/lab/kubenode"
	"github.com/twill-net/twill/internal/lab/underlay"
)

// UpOptions are Options plus how to start the supervisor.
type UpOptions struct {
	Options
	// Self is the twill binary to run as `twill lab serve` (os.Executable()).
	Self string
	// Progress receives the supervisor's log while the lab comes up.
	Progress io.Writer
	// Timeout bounds the wait for the lab to be ready.
	Timeout time.Duration
}

// ErrAlreadyUp says a supervisor already runs in the lab directory.
var ErrAlreadyUp = errors.New("the lab is already up")

// Up starts the supervisor, detached in its own session so it outlives this command, and
// follows its log until the lab is ready or has failed. A lab already running is left as it is
// (ErrAlreadyUp, with its state); the leftovers of a lab that died are removed first.
func Up(ctx context.Context, o UpOptions) (State, error) {
	if err := o.validate(); err != nil {
		return State{}, err
	}
	p := o.Paths
	if pid := p.Supervisor(); pid != 0 {
		st, _ := p.ReadState()
		return st, fmt.Errorf("%w (supervisor pid %d, directory %s)", ErrAlreadyUp, pid, p.Dir)
	}
	if err := Down(ctx, p, o.Name, io.Discard); err != nil {
		return State{}, fmt.Errorf("removing the leftovers of an earlier lab: %w", err)
	}
	if err := os.MkdirAll(p.Dir, 0o755); err != nil {
		return State{}, err
	}
	logFile, err := os.OpenFile(p.Log(), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return State{}, err
	}
	defer logFile.Close()
	cmd := exec.Command(o.Self, "lab", "serve",
		"--name", o.Name, "--nodes", fmt.Sprint(o.Nodes), "--routing", o.Routing, "--services", o.Services,
		"--upstream-bin", o.UpstreamBin, "--twill-bin", o.TwillBin, "--cni-bin", o.CNIBin)
	cmd.Env = append(os.Environ(), EnvDir+"="+p.Dir)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// A session of its own: no terminal, no signal from the shell that ran `up`.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return State{}, fmt.Errorf("starting the lab's supervisor: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	return follow(ctx, p, exited, o.Progress, o.Timeout)
}

// follow copies the supervisor's log to progress until the state is ready or failed, or the
// supervisor exits.
func follow(ctx context.Context, p Paths, exited <-chan struct{}, progress io.Writer, timeout time.Duration) (State, error) {
	if timeout == 0 {
		timeout = 15 * time.Minute
	}
	deadline := time.After(timeout)
	var offset int64
	copyLog := func() {
		f, err := os.Open(p.Log())
		if err != nil {
			return
		}
		defer f.Close()
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			return
		}
		r := bufio.NewReader(f)
		for {
			line, err := r.ReadString('\n')
			if err != nil { // a partial line waits for its end
				return
			}
			offset += int64(len(line))
			if progress != nil {
				_, _ = io.WriteString(progress, line)
			}
		}
	}
	for {
		copyLog()
		st, err := p.ReadState()
		if err == nil {
			switch st.Phase {
			case PhaseReady:
				return st, nil
			case PhaseFailed:
				return st, fmt.Errorf("the lab failed to come up: %s (log: %s; `twill lab down` removes what is left)", st.Error, p.Log())
			}
		}
		select {
		case <-exited:
			copyLog()
			return st, fmt.Errorf("the lab's supervisor exited before the lab was ready (log: %s)", p.Log())
		case <-ctx.Done():
			return st, fmt.Errorf("waiting for the lab (it goes on coming up; `twill lab status`): %w", ctx.Err())
		case <-deadline:
			return st, fmt.Errorf("the lab is not ready after %s (log: %s)", timeout, p.Log())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Down stops the supervisor (which removes the lab), then removes whatever a supervisor that
// died could not (namespaces, containerd's shims and pods, mounts, cgroups) and the lab's
// directory. Nothing there is not an error. name is the lab's name when no state says it.
func Down(ctx context.Context, p Paths, name string, progress io.Writer) error {
	if st, err := p.ReadState(); err == nil && st.Name != "" {
		name = st.Name
	}
	if name == "" {
		name = DefaultName
	}
	if pid := p.Supervisor(); pid != 0 {
		fmt.Fprintf(progress, "stopping the lab (supervisor pid %d)\n", pid)
		_ = syscall.Kill(pid, syscall.SIGTERM)
		if !waitGone(ctx, p, 2*time.Minute) {
			fmt.Fprintln(progress, "the supervisor did not stop in time: killing it")
			_ = syscall.Kill(pid, syscall.SIGKILL)
			waitGone(ctx, p, 10*time.Second)
		}
	}
	// The lab's namespaces are "<name>-ul", "<name>-cp", "<name>-nodeN".
	prefix := name + "-"
	var errs []error
	errs = append(errs, kubenode.CleanupStale(prefix), underlay.CleanupStale(prefix))
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := kubenode.UnmountNamespaceDirs(p.Dir); err != nil {
		return err
	}
	if mounts := mountsUnder(p.Dir); len(mounts) > 0 {
		// Never remove files through a mount: they would be someone else's.
		return fmt.Errorf("not removing %s: mounts remain under it: %s", p.Dir, strings.Join(mounts, ", "))
	}
	if err := os.RemoveAll(p.Dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func waitGone(ctx context.Context, p Paths, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for p.Supervisor() != 0 {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(200 * time.Millisecond)
	}
	return true
}

// mountsUnder lists the mount points of this mount namespace under dir.
func mountsUnder(dir string) []string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil
	}
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && (f[4] == abs || strings.HasPrefix(f[4], abs+"/")) {
			out = append(out, f[4])
		}
	}
	return out
}

// Exec runs argv on the named node, in its namespaces, with the given standard streams, and
// returns its error (an *exec.ExitError carries its exit code).
func Exec(ctx context.Context, p Paths, node string, argv []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(argv) == 0 {
		return errors.New("nothing to run")
	}
	st, err := p.ReadState()
	if err != nil {
		return fmt.Errorf("no lab in %s (twill lab up): %w", p.Dir, err)
	}
	var names []string
	for _, n := range st.Nodes {
		if n.Name == node {
			cmd := exec.CommandContext(ctx, "nsenter", append(append(append([]string{}, n.Enter...), "--"), argv...)...)
			cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
			return cmd.Run()
		}
		names = append(names, n.Name)
	}
	return fmt.Errorf("no node %q in the lab (nodes: %s)", node, strings.Join(names, ", "))
}
