package kubenode

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// mount is one line of /proc/self/mountinfo, the parts the lab reads.
type mount struct {
	root, point, fstype string
	superOpts           []string
}

// readMounts parses /proc/self/mountinfo: the lab finds cgroup hierarchies and the namespace
// files of its nodes there.
func readMounts() ([]mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mount
	s := bufio.NewScanner(f)
	for s.Scan() {
		// "<id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <fstype> <source> <super options>"
		before, after, ok := strings.Cut(s.Text(), " - ")
		if !ok {
			continue
		}
		fields, tail := strings.Fields(before), strings.Fields(after)
		if len(fields) < 5 || len(tail) < 1 {
			continue
		}
		m := mount{root: unescapeMountPath(fields[3]), point: unescapeMountPath(fields[4]), fstype: tail[0]}
		if len(tail) >= 3 {
			m.superOpts = strings.Split(tail[2], ",")
		}
		out = append(out, m)
	}
	return out, s.Err()
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space, ...).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
