// Command pause is the lab's pod sandbox process: the one process of a pod's sandbox container,
// holding the pod's namespaces while its containers come and go. It does nothing but wait: it
// exits on SIGINT or SIGTERM and reaps any child that ends (it is PID 1 of the pod when the
// pod shares its process namespace). Package kubenode builds it into the lab's pause image.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		reapChildren()
	}
}

// reapChildren collects every child that has ended; one SIGCHLD may stand for several.
func reapChildren() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
