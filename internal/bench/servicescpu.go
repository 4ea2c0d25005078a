package bench

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// CPU time of the lab's programs, to say where the time of a long step (creating tens of
// thousands of services) goes: the apiserver, etcd, or this benchmark's own clients.

// clockTicks is the kernel's USER_HZ, the unit of /proc/PID/stat's times (100 on Linux).
const clockTicks = 100

// cpuSample is the CPU time (user + system) used so far by each lab component, and by this
// process under "bench".
type cpuSample map[string]time.Duration

// sampleCPU reads the CPU time of the lab's programs and of this process.
func sampleCPU(labDir, labName string) (cpuSample, error) {
	procs, err := findLabProcesses(labDir, labName)
	if err != nil {
		return nil, err
	}
	out := cpuSample{}
	for _, p := range procs {
		if d, err := processCPU(p.pid); err == nil {
			out[p.component] += d
		}
	}
	if d, err := processCPU(os.Getpid()); err == nil {
		out["bench"] = d
	}
	return out, nil
}

// processCPU is the user and system time a process has used.
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(string(b))
}

// parseStatCPU reads utime and stime (fields 14 and 15) from /proc/PID/stat text; the command
// name, field 2, may hold spaces, so fields are counted after its closing parenthesis.
func parseStatCPU(stat string) (time.Duration, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("stat %q: no command name", stat)
	}
	f := strings.Fields(stat[i+1:])
	// f[0] is field 3 (state): utime is field 14, f[11]; stime f[12].
	if len(f) < 13 {
		return 0, fmt.Errorf("stat %q: too few fields", stat)
	}
	var ticks int64
	for _, s := range f[11:13] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("stat %q: %w", stat, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// describeCPUSince says how much CPU each component used since earlier, most first, beside
// the wall time: e.g. "kube_apiserver 80s, etcd 20s, bench 10s in 60s".
func (s cpuSample) describeSince(earlier cpuSample, wall time.Duration) string {
	type use struct {
		name string
		d    time.Duration
	}
	var uses []use
	for name, d := range s {
		if used := d - earlier[name]; used >= time.Second/2 {
			uses = append(uses, use{name, used})
		}
	}
	slices.SortFunc(uses, func(a, b use) int { return int(b.d - a.d) })
	var parts []string
	for _, u := range uses {
		parts = append(parts, fmt.Sprintf("%s %.0fs", u.name, u.d.Seconds()))
	}
	if len(parts) == 0 {
		parts = []string{"under half a second by each program"}
	}
	return fmt.Sprintf("CPU used: %s in %.0fs of wall time", strings.Join(parts, ", "), wall.Seconds())
}

// controlPlaneNice is the niceness the lab's etcd and kube-apiserver run at while the bulk
// services are created: on a machine shared with other work, that step is the apiserver's
// CPU (see servicesworld.go), and at the default niceness it gets a fraction of it.
// Measurements run with the default restored.
const controlPlaneNice = -10

// setControlPlaneNice sets the niceness of every thread of the lab's etcd and kube-apiserver
// (a process's niceness is per thread on Linux; threads made later inherit their maker's).
func setControlPlaneNice(labDir, labName string, nice int) error {
	procs, err := findLabProcesses(labDir, labName)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range procs {
		if p.component != "etcd" && p.component != "kube_apiserver" {
			continue
		}
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", p.pid))
		if err != nil {
			continue // exited meanwhile
		}
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			if err := unix.Setpriority(unix.PRIO_PROCESS, tid, nice); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("setting the niceness of %s thread %d: %w", p.component, tid, err))
			}
		}
	}
	return errors.Join(errs...)
}
