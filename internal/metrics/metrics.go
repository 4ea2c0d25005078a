// Package metrics is the agent's Prometheus endpoint: what the datapath counted (policy
// verdicts by policy and rule), served on /metrics for scrapers and for `twill policy
// counters`; the agent adds its other HTTP endpoints (drop events, internal/flow) to the same
// server as Routes. Collectors read the datapath when scraped, so nothing is counted twice and an
// idle agent does no metrics work.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultAddress is where the agent serves metrics unless told otherwise (the port Cilium's
// agent uses, so existing scrape configs find it).
const DefaultAddress = ":9962"

// Path is the HTTP path of the metrics.
const Path = "/metrics"

// NewRegistry returns a registry holding the Go runtime and process collectors and cs.
func NewRegistry(cs ...prometheus.Collector) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	all := append([]prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	}, cs...)
	for _, c := range all {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics collector: %w", err)
		}
	}
	return reg, nil
}

// Route is one more handler the agent's HTTP server serves beside the metrics (drop events).
type Route struct {
	Path    string
	Handler http.Handler
}

// Serve serves reg on addr, and routes, until ctx ends.
func Serve(ctx context.Context, addr string, reg *prometheus.Registry, log *slog.Logger, routes ...Route) error {
	mux := http.NewServeMux()
	mux.Handle(Path, promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slogPrinter{log}}))
	for _, r := range routes {
		mux.Handle(r.Path, r.Handler)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	// Requests end with the server's context, so a stream (drop events ?follow) does not
	// hold up shutdown.
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	log.Info("serving metrics", "address", l.Addr().String(), "path", Path)
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: %w", err)
	}
	return nil
}

// slogPrinter lets promhttp report collection errors through slog.
type slogPrinter struct{ log *slog.Logger }

func (p slogPrinter) Println(v ...any) { p.log.Warn("metrics collection", "error", fmt.Sprint(v...)) }
