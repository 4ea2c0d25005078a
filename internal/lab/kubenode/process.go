package kubenode

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/twill-net/twill/internal/lab/underlay"
)

// stopGrace is how long a node daemon gets to exit after SIGTERM before it is killed.
const stopGrace = 10 * time.Second

// daemon is a long-running node program (containerd, the kubelet), its output in a log file.
type daemon struct {
	name, log string
	cmd       *exec.Cmd
	done      chan struct{}
	err       error // valid once done is closed
}

// startDaemon starts cmd (made by Node.Command) with its output appended to logPath, so that it
// dies with this program (underlay.StartCommand), and moves it into the node's cgroup.
func (n *Node) startDaemon(name, logPath string, cmd *exec.Cmd) (*daemon, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s: opening its log: %w", name, err)
	}
	defer f.Close() // the child has its own descriptor
	fmt.Fprintf(f, "--- %s %q\n", time.Now().Format(time.RFC3339), cmd.Args)
	cmd.Stdout, cmd.Stderr = f, f
	if err := underlay.StartCommand(cmd); err != nil {
		return nil, fmt.Errorf("%s: starting: %w", name, err)
	}
	d := &daemon{name: name, log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() { d.err = cmd.Wait(); close(d.done) }()
	// It joins the node's cgroup right after it starts, before it has started anything worth
	// finding later (containerd starts its shims only when asked for a pod).
	if err := n.cgroups.join(cmd.Process.Pid); err != nil {
		return d, errors.Join(err, d.stop())
	}
	return d, nil
}

func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, kills after stopGrace, and waits for the exit.
func (d *daemon) stop() error {
	if d == nil || d.exited() {
		return nil
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return nil
	case <-time.After(stopGrace):
	}
	_ = d.cmd.Process.Kill()
	<-d.done
	return nil
}

// failure describes a daemon that exited or never got ready, with the end of its log.
func (d *daemon) failure(what string) error {
	state := "is running"
	if d.exited() {
		state = fmt.Sprintf("exited (%v)", d.err)
	}
	return fmt.Errorf("%s %s; it %s; its log %s ends:\n%s", d.name, what, state, d.log, tail(d.log, 25))
}

// tail returns the last n lines of the file at path (or why it cannot).
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
