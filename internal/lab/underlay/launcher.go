package underlay

import (
	"os/exec"
	"runtime"
	"sync"
)

// A parent-death signal is tied to the OS thread that forked the child, not to the process: the
// child gets it when that thread ends. Go ends a thread whenever a goroutine that locked it
// returns without unlocking (containernetworking's testutils.NewNS does so on purpose), so a lab
// process started from an ordinary goroutine could be killed at any moment by unrelated code.
// Processes started by StartCommand are forked by one thread that is locked to a goroutine that
// never returns: their signal comes only when the program itself dies.
var launcher struct {
	once     sync.Once
	requests chan launchRequest
}

type launchRequest struct {
	cmd  *exec.Cmd
	done chan error
}

// StartCommand starts cmd (typically from Node.Command) so that its parent-death signal fires
// when this program dies and at no other time. Use it instead of cmd.Start for every long-lived
// lab process; cmd.Wait is used as usual.
func StartCommand(cmd *exec.Cmd) error {
	launcher.once.Do(func() {
		launcher.requests = make(chan launchRequest)
		go func() {
			runtime.LockOSThread() // never unlocked: this thread lives as long as the program
			for req := range launcher.requests {
				req.done <- req.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	launcher.requests <- launchRequest{cmd: cmd, done: done}
	return <-done
}
