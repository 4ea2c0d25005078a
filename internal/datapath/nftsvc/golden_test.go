package nftsvc

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"sigs.k8s.io/knftables"

	"github.com/twill-net/twill/internal/datapath"
)

var update = flag.Bool("update", false, "rewrite the golden files from the current output")

// TestGoldenTable renders services covering every feature and compares the whole table, as
// the fake's dump shows it, with testdata/table.golden (go test -update rewrites it).
func TestGoldenTable(t *testing.T) {
	fake := knftables.NewFake(TableFamily, TableName)
	r := New(fake, nil)
	if err := r.ApplyServices(context.Background(), datapath.ServiceChanges{Full: true, Set: goldenServices()}); err != nil {
		t.Fatal(err)
	}
	compareGolden(t, "table.golden", fake.Dump())
}

func compareGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the rendering; got:\n%s", path, got)
	}
}
