package bench

import (
	"fmt"
	"os"
	"strings"
)

// machineLoad says how busy the machine was, for a measurement's conditions: the kernel's load
// averages over 1, 5 and 15 minutes when the figures were written (a run of several minutes
// is covered by the last two). On a 2-core machine anything above about 2 means the suite
// shared the CPUs with other work.
func machineLoad() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "load average unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "load average unknown"
	}
	return fmt.Sprintf("load average %s/%s/%s (1/5/15 min) at the end", f[0], f[1], f[2])
}
