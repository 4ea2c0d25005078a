package datapath

import (
	"context"
	"errors"
	"testing"
)

// The fake keeps what it was given as it was, whatever the caller does to its state later.
func TestFakePolicyRecordsCopies(t *testing.T) {
	var f FakePolicy
	if f.Last() != nil {
		t.Fatal("Last before any apply is not nil")
	}
	s := handState()
	want := s.String()
	if err := f.ApplyPolicy(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	s.Ingress.NetworkPolicy[0].Ports[0].NamedPort = "changed"
	s.IdentitySets["A"].Members[0] = 999
	for a := range s.Endpoints {
		delete(s.Endpoints, a)
	}
	if got := f.Last().String(); got != want {
		t.Errorf("the recorded state changed with the caller's:\n%s\nwant:\n%s", got, want)
	}
	boom := errors.New("boom")
	f.SetErr(boom)
	if err := f.ApplyPolicy(context.Background(), handState()); !errors.Is(err, boom) {
		t.Errorf("apply after SetErr: %v, want %v", err, boom)
	}
	if n := len(f.Applied()); n != 2 {
		t.Errorf("%d states recorded, want 2 (failed applies too)", n)
	}
}
