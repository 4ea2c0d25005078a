package ebpfdp

import (
	"log/slog"
	"os"
	"testing"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads eBPF programs and creates network namespaces")
	}
}

// TestLoad is the feature probe the agent runs: the program loads (tcx, the conntrack kfuncs,
// CO-RE against this kernel) and its counters read.
func TestLoad(t *testing.T) {
	requireRoot(t)
	f, err := Load(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Stats(); err != nil {
		t.Fatal(err)
	}
}
