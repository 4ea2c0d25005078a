package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
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

// histogramTotals are a histogram's _sum, _count and cumulative buckets.
type histogramTotals struct {
	sum   float64
	count float64
	// buckets are the cumulative counts by upper bound, in the order exposed (ascending).
	buckets []histogramBucket
}

// histogramBucket is one _bucket line: observations at most le (cumulative).
type histogramBucket struct {
	le    float64
	count float64
}

// quantileBoundSince is the upper bound of the bucket holding the q-quantile (0 < q <= 1) of
// the observations made since earlier: the quantile is at most that (+Inf when it fell in the
// last bucket; 0 when no observation was made or the buckets are missing). A bound, not an
// interpolation: with a few tens of observations the bucket edge is all the histogram says.
func (h histogramTotals) quantileBoundSince(earlier histogramTotals, q float64) float64 {
	n := h.count - earlier.count
	if n <= 0 || len(h.buckets) == 0 {
		return 0
	}
	before := map[float64]float64{}
	for _, b := range earlier.buckets {
		before[b.le] = b.count
	}
	rank := q * n
	for _, b := range h.buckets {
		if b.count-before[b.le] >= rank-1e-9 {
			return b.le
		}
	}
	return math.Inf(1)
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
		case name + "_bucket":
			le, ok := labelValue(labels, "le")
			if !ok {
				continue
			}
			bound, err := strconv.ParseFloat(le, 64)
			if err != nil {
				return h, fmt.Errorf("metric line %q: %w", line, err)
			}
			h.buckets = append(h.buckets, histogramBucket{le: bound})
			dst = &h.buckets[len(h.buckets)-1].count
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

// labelValue reads one label's value from a Prometheus label list (`a="x",b="y"}`).
func labelValue(labels, name string) (string, bool) {
	i := strings.Index(labels, name+`="`)
	if i < 0 || (i > 0 && labels[i-1] != ',' && labels[i-1] != '{') {
		return "", false
	}
	v := labels[i+len(name)+2:]
	end := strings.IndexByte(v, '"')
	if end < 0 {
		return "", false
	}
	return v[:end], true
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
