package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/twill-net/twill/internal/lab/underlay"
	"github.com/twill-net/twill/internal/metrics"
)

// The proxies' own measure of their programming time, read from their Prometheus metrics in
// the node's network namespace: kube-proxy's sync duration (each sync writes every change
// since the last: its own "programmed" figure, without the informer's delivery or its
// minimum sync interval) and twill's twill_services_programming_seconds (from the agent
// receiving a change to the end of the apply that holds it, batching window included).

// Where each proxy serves its metrics on the node, and the histogram read.
const (
	kubeProxyMetricsURL  = "http://127.0.0.1:10249/metrics"
	kubeProxySyncMetric  = "kubeproxy_sync_proxy_rules_duration_seconds"
	twillMetricsURL      = "http://127.0.0.1" + metrics.DefaultAddress + metrics.Path
	twillProgramMetric   = "twill_services_programming_seconds"
	metricsScrapeTimeout = 10 * time.Second
)

// histogramTotals are a histogram's _sum and _count.
type histogramTotals struct {
	sum   float64
	count float64
}

// meanSince is the mean of the observations made since earlier (0 when none was).
func (h histogramTotals) meanSince(earlier histogramTotals) float64 {
	n := h.count - earlier.count
	if n <= 0 {
		return 0
	}
	return (h.sum - earlier.sum) / n
}

// parseHistogramTotals reads name_sum and name_count from Prometheus text (of the series
// without labels, or labelled ip_family="IPv4").
func parseHistogramTotals(r io.Reader, name string) (histogramTotals, error) {
	var h histogramTotals
	var haveSum, haveCount bool
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64*1024), 1024*1024)
	for s.Scan() {
		line := s.Text()
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		metricName, labels, _ := strings.Cut(f[0], "{")
		// kube-proxy labels its histograms by IP family: the services here are IPv4.
		if strings.Contains(labels, "ip_family=") && !strings.Contains(labels, `ip_family="IPv4"`) {
			continue
		}
		var dst *float64
		switch metricName {
		case name + "_sum":
			dst, haveSum = &h.sum, true
		case name + "_count":
			dst, haveCount = &h.count, true
		default:
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			return h, fmt.Errorf("metric line %q: %w", line, err)
		}
		*dst = v
	}
	if err := s.Err(); err != nil {
		return h, err
	}
	if !haveSum || !haveCount {
		return h, fmt.Errorf("no histogram %s in the metrics", name)
	}
	return h, nil
}

// scrapeHistogram fetches url from inside ns and reads the named histogram's totals.
func scrapeHistogram(ctx context.Context, ns *underlay.Node, url, name string) (histogramTotals, error) {
	ctx, cancel := context.WithTimeout(ctx, metricsScrapeTimeout)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return ns.DialContext(ctx, network, addr)
		},
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return histogramTotals{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return histogramTotals{}, fmt.Errorf("fetching %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return histogramTotals{}, fmt.Errorf("fetching %s: %s", url, resp.Status)
	}
	return parseHistogramTotals(resp.Body, name)
}

// scrapeHistogramRetrying is scrapeHistogram tried three times, a second apart: a collector
// of the agent may fail once on a loaded machine (its nft listing timing out), which fails
// the whole scrape.
func scrapeHistogramRetrying(ctx context.Context, ns *underlay.Node, url, name string) (histogramTotals, error) {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var h histogramTotals
		if h, err = scrapeHistogram(ctx, ns, url, name); err == nil {
			return h, nil
		}
		select {
		case <-ctx.Done():
			return h, errors.Join(err, ctx.Err())
		case <-time.After(time.Second):
		}
	}
	return histogramTotals{}, err
}

// proxyMetric says where the proxy's own programming histogram is.
func proxyMetric(proxy string) (url, name string) {
	if proxy == ProxyTwill {
		return twillMetricsURL, twillProgramMetric
	}
	return kubeProxyMetricsURL, kubeProxySyncMetric
}
