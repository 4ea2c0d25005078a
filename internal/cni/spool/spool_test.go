package spool

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/twill-net/twill/internal/cniproto"
)

func TestWriteListLookupRemove(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pending")
	reqs := []cniproto.Request{
		{ContainerID: "a_b", IfName: "c", PodName: "one"},
		{ContainerID: "a", IfName: "b_c", PodName: "two"},
	}
	for _, r := range reqs {
		if err := Write(dir, r); err != nil {
			t.Fatal(err)
		}
	}
	// Writing the same attachment again replaces its file.
	if err := Write(dir, reqs[0]); err != nil {
		t.Fatal(err)
	}
	entries, err := List(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Fatalf("List = %d entries, want 2 (names must not collide): %+v", len(entries), entries)
	}
	files, _ := os.ReadDir(dir)
	for _, f := range files {
		if f.Name()[0] == '.' {
			t.Errorf("temporary file %s left behind", f.Name())
		}
	}
	e, ok := Lookup(dir, "a", "b_c")
	if !ok || e.Err != nil || e.Request.PodName != "two" {
		t.Errorf("Lookup = %+v, %v", e, ok)
	}
	if err := os.WriteFile(filepath.Join(dir, "junk.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	entries, _ = List(dir)
	bad := 0
	for _, e := range entries {
		if e.Err != nil {
			bad++
		}
	}
	if bad != 1 {
		t.Errorf("a corrupt file should be listed with its error; got %d bad entries", bad)
	}
	for _, e := range entries {
		if err := Remove(e.Path); err != nil {
			t.Fatal(err)
		}
		if err := Remove(e.Path); err != nil {
			t.Errorf("removing twice: %v", err)
		}
	}
	if entries, _ := List(dir); len(entries) != 0 {
		t.Errorf("entries left: %+v", entries)
	}
	if entries, err := List(filepath.Join(dir, "missing")); err != nil || entries != nil {
		t.Errorf("List of a missing dir = %v, %v; want nothing pending", entries, err)
	}
}
