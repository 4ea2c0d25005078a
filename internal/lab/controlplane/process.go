package controlplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/twill-net/twill/internal/lab/underlay"
)

// stopGrace is how long a component gets to exit after SIGTERM before it is killed.
const stopGrace = 15 * time.Second

// process is one running control-plane component, its output in a log file.
type process struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited and been reaped
	exitErr error         // valid once done is closed
}

// startProcess runs bin in node's network namespace with its output appended to logPath. It
// does not use a context: the process lives until stop, or until this program dies
// (underlay.StartCommand sees to its parent-death signal).
func startProcess(node *underlay.Node, name, bin, logPath string, args []string) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s: opening its log: %w", name, err)
	}
	defer logFile.Close() // the child has its own descriptor
	fmt.Fprintf(logFile, "--- %s %s %q\n", time.Now().Format(time.RFC3339), bin, args)
	cmd := node.Command(context.Background(), bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := underlay.StartCommand(cmd); err != nil {
		return nil, fmt.Errorf("%s: starting %s: %w", name, bin, err)
	}
	p := &process{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.exitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop asks the process to exit (SIGTERM), kills it after stopGrace, and waits for it.
func (p *process) stop() error {
	if p.exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("%s: signalling: %w", p.name, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(stopGrace):
	}
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("%s: killing: %w", p.name, err)
	}
	<-p.done
	return fmt.Errorf("%s did not exit within %s of SIGTERM and was killed (log: %s)", p.name, stopGrace, p.logPath)
}

// failure describes a process that stopped or never got ready, with the end of its log.
func (p *process) failure(what string) error {
	state := "is running"
	if p.exited() {
		state = fmt.Sprintf("exited (%v)", p.exitErr)
	}
	return fmt.Errorf("%s %s; %s; last lines of %s:\n%s", p.name, what, state, p.logPath, tail(p.logPath, 25))
}

// tail returns the last n lines of the file at path (or why it cannot).
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", filepath.Base(path), err)
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
