package flow

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"text/tabwriter"
)

// DropsPath is where the agent's HTTP server serves drop events.
const DropsPath = "/v1/drops"

// Handler serves h's events: GET returns the recent ones as a JSON array, oldest first;
// with ?follow it streams them and every later one as JSON lines until the client leaves.
func Handler(h *Hub) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodGet {
			http.Error(w, "GET only", http.StatusMethodNotAllowed)
			return
		}
		if _, follow := req.URL.Query()["follow"]; !follow {
			w.Header().Set("Content-Type", "application/json")
			events := h.Recent()
			if events == nil {
				events = []DropEvent{}
			}
			_ = json.NewEncoder(w).Encode(events)
			return
		}
		flusher, ok := w.(http.Flusher)
		if !ok {
			http.Error(w, "streaming unsupported", http.StatusInternalServerError)
			return
		}
		recent, live := h.SubscribeWithRecent(req.Context())
		w.Header().Set("Content-Type", "application/x-ndjson")
		enc := json.NewEncoder(w)
		for _, e := range recent {
			if enc.Encode(e) != nil {
				return
			}
		}
		flusher.Flush()
		for e := range live {
			if enc.Encode(e) != nil {
				return
			}
			flusher.Flush()
		}
	})
}

// ReadDrops fetches an agent's recent drop events from url (its DropsPath).
func ReadDrops(ctx context.Context, url string) ([]DropEvent, error) {
	resp, err := get(ctx, url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var events []DropEvent
	if err := json.NewDecoder(resp.Body).Decode(&events); err != nil {
		return nil, fmt.Errorf("read drop events from %s: %w", url, err)
	}
	return events, nil
}

// FollowDrops streams an agent's drop events from url (its DropsPath), the recent ones first,
// calling fn for each until ctx ends, the agent closes the stream or fn fails.
func FollowDrops(ctx context.Context, url string, fn func(DropEvent) error) error {
	resp, err := get(ctx, url+"?follow")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(bufio.NewReader(resp.Body))
	for {
		var e DropEvent
		if err := dec.Decode(&e); err != nil {
			if err == io.EOF || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read drop events from %s: %w", url, err)
		}
		if err := fn(e); err != nil {
			return err
		}
	}
}

func get(ctx context.Context, url string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("read the agent's drop events (is the agent running with --metrics-address?): %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("read drop events from %s: %s", url, resp.Status)
	}
	return resp, nil
}

// DropTable prints events as a table, one line each.
type DropTable struct {
	tw *tabwriter.Writer
}

// NewDropTable writes the table's header to w.
func NewDropTable(w io.Writer) *DropTable {
	t := &DropTable{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
	fmt.Fprintln(t.tw, "TIME\tDIRECTION\tPOD\tPEER\tPROTO\tSOURCE\tDESTINATION\tREASON\tTIER\tPOLICY\tRULE")
	return t
}

// Write adds one event; Flush prints what was added.
func (t *DropTable) Write(e DropEvent) {
	fmt.Fprintf(t.tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
		e.Time.Format("15:04:05.000"), dash(e.Direction), dash(e.Pod), addrOrDash(e.Peer.String(), e.Peer.IsValid()),
		e.Protocol, endpoint(e.Source, e.SrcPort), endpoint(e.Destination, e.DstPort),
		e.Reason, dash(e.Tier), dash(e.Policy), dash(e.Rule))
}

func (t *DropTable) Flush() error { return t.tw.Flush() }

func endpoint(addr netip.Addr, port uint16) string {
	if port == 0 {
		return addr.String()
	}
	return netip.AddrPortFrom(addr, port).String()
}

func addrOrDash(s string, ok bool) string {
	if !ok {
		return "-"
	}
	return s
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
