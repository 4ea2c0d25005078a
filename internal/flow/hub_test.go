package flow

import (
	"context"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"
)

func numbered(i int) DropEvent { return DropEvent{Rule: strconv.Itoa(i)} }

func rules(es []DropEvent) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Rule)
	}
	return out
}

func TestHubKeepsTheMostRecentOldestFirst(t *testing.T) {
	h := NewHub(3)
	if got := h.Recent(); len(got) != 0 {
		t.Fatalf("new hub holds %v", got)
	}
	h.Publish(numbered(1))
	h.Publish(numbered(2))
	if got := rules(h.Recent()); len(got) != 2 || got[0] != "1" || got[1] != "2" {
		t.Errorf("after 2 events: %v, want [1 2]", got)
	}
	for i := 3; i <= 7; i++ {
		h.Publish(numbered(i))
	}
	if got := rules(h.Recent()); len(got) != 3 || got[0] != "5" || got[2] != "7" {
		t.Errorf("after 7 events in a ring of 3: %v, want [5 6 7]", got)
	}
}

func TestSubscribersGetLiveEventsAndASlowOneCannotBlock(t *testing.T) {
	h := NewHub(4)
	h.Publish(numbered(0))
	ctx, cancel := context.WithCancel(context.Background())
	recent, live := h.SubscribeWithRecent(ctx)
	slow := h.Subscribe(context.Background()) // never read
	if got := rules(recent); len(got) != 1 || got[0] != "0" {
		t.Errorf("recent at subscription: %v, want [0]", got)
	}
	done := make(chan struct{})
	go func() {
		for i := 1; i <= subscriberBuffer+10; i++ {
			h.Publish(numbered(i))
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Publish blocked on a subscriber that does not read")
	}
	if e := <-live; e.Rule != "1" {
		t.Errorf("first live event %q, want 1", e.Rule)
	}
	if h.Missed() < 10 {
		t.Errorf("missed %d events, want at least the 10 the unread subscribers had no room for", h.Missed())
	}
	_ = slow
	cancel()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case _, open := <-live:
			if !open {
				return
			}
		case <-deadline:
			t.Fatal("subscription not closed after its context ended")
		}
	}
}

func TestDropsOverHTTP(t *testing.T) {
	h := NewHub(8)
	h.Publish(DropEvent{Pod: "x/a", Rule: "default-deny", Reason: ReasonDefaultDeny, Source: addr("10.0.0.2"), Destination: addr("10.0.0.1")})
	srv := httptest.NewServer(Handler(h))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	got, err := ReadDrops(ctx, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Pod != "x/a" || got[0].Source != addr("10.0.0.2") {
		t.Fatalf("read %+v, want the one event published", got)
	}

	// Follow: the recent event, then one published later.
	seen := make(chan DropEvent, 4)
	followCtx, stop := context.WithCancel(ctx)
	followed := make(chan error, 1)
	go func() {
		followed <- FollowDrops(followCtx, srv.URL, func(e DropEvent) error { seen <- e; return nil })
	}()
	if e := <-seen; e.Pod != "x/a" {
		t.Errorf("first followed event %+v, want the recent one", e)
	}
	h.Publish(DropEvent{Pod: "x/b", Rule: "0", Reason: ReasonPolicy})
	select {
	case e := <-seen:
		if e.Pod != "x/b" {
			t.Errorf("second followed event %+v, want x/b's", e)
		}
	case <-ctx.Done():
		t.Fatal("a live event did not reach the follower")
	}
	stop()
	if err := <-followed; err != nil {
		t.Errorf("FollowDrops after its context ended: %v", err)
	}
}
