// Package testutil holds small helpers shared by twill's tests.
package testutil

import (
	"os"
	"testing"
)

// RequireRoot skips a test that changes the kernel's network state (namespaces, links, routes,
// nftables) when it is not run as root. CI runs as root, so there these tests always run.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root to create network namespaces (run the suite as root, as CI does)")
	}
}
