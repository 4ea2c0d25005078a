package nftdp

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"

	"github.com/twill-net/twill/internal/datapath"
)

var logPrefix = regexp.MustCompile(` log group (\d+) snaplen \d+ prefix "([^"]*)" drop$`)

// Every drop of the golden table is logged to the drop log group with a prefix the kernel
// keeps whole, and every prefix maps back to the attribution of the counter that counts it.
func TestEveryDropIsLoggedWithAnAttributablePrefix(t *testing.T) {
	fake := knftables.NewFake(TableFamily, TableName)
	r := New(fake, "n1", nil)
	if _, ok := r.DropAttribution("default-deny-ingress"); ok {
		t.Errorf("DropAttribution before any apply found a counter")
	}
	if err := r.ApplyPolicy(context.Background(), goldenState()); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"default-deny-ingress": datapath.DefaultDenyCounter(datapath.Ingress),
		"default-deny-egress":  datapath.DefaultDenyCounter(datapath.Egress),
		"ct-invalid":           datapath.CounterInvalid,
		"r-dfc8b4852a87":       "admin/no-ssh/ingress/0",
		"r-76c2a6bddf90":       "baseline/x-outside/egress/0",
	}
	got := map[string]string{}
	for _, line := range strings.Split(fake.Dump(), "\n") {
		if !strings.HasPrefix(line, "add rule ") {
			continue
		}
		if strings.HasSuffix(line, " drop") && !strings.Contains(line, " drop-") && !strings.Contains(line, "counter name") {
			t.Errorf("a drop neither counted nor logged: %s", line)
		}
		m := logPrefix.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		if m[1] != strconv.Itoa(int(DropLogGroup)) {
			t.Errorf("logged to group %s, want DropLogGroup: %s", m[1], line)
		}
		prefix := m[2]
		if len(prefix) > DropLogPrefixMax {
			t.Errorf("prefix %q is longer than the kernel keeps (%d)", prefix, DropLogPrefixMax)
		}
		if !strings.Contains(line, "limit rate ") {
			t.Errorf("drop log without a rate limit: %s", line)
		}
		key, ok := r.DropAttribution(prefix)
		if !ok {
			t.Errorf("prefix %q attributes to no counter", prefix)
		}
		got[prefix] = key
	}
	for prefix, key := range want {
		if got[prefix] != key {
			t.Errorf("prefix %q attributes to %q, want %q", prefix, got[prefix], key)
		}
	}
	if len(got) != len(want) {
		t.Errorf("logged prefixes %v, want those of %v", got, want)
	}
	if _, ok := r.DropAttribution("r-000000000000"); ok {
		t.Errorf("an unknown prefix was attributed")
	}
}
