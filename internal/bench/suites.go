package bench

import (
	"context"
	"fmt"
	"io"
	"strings"
)

// Options are what every suite takes from `twill bench`.
type Options struct {
	// Iterations is how many rounds each measurement repeats (0: the suite's default).
	Iterations int
	// Progress receives what a suite is doing while it runs (nil: nothing is said).
	Progress io.Writer
	// ServiceScales and ServiceProxies are the services suite's scales and proxies (nil: its
	// defaults); Iterations is its number of single-service additions per scale and proxy.
	ServiceScales  []int
	ServiceProxies []string
}

// Suite is one benchmark program.
type Suite struct {
	Name  string
	Short string
	Run   func(ctx context.Context, opts Options) (Report, error)
}

// AllSuites is the name that selects every suite.
const AllSuites = "all"

// Suites lists every suite, in the order `twill bench all` runs them.
func Suites() []Suite {
	return []Suite{
		{Name: "cni", Short: "CNI ADD/DEL latency as a runtime sees it, one pod at a time and 50 at once, against bridge+host-local", Run: runCNISuite},
		{Name: "datapath", Short: "pod-to-pod TCP throughput, request/response and connect-per-request rates (same node, native, VXLAN) against the veth and node limits and bridge+host-local", Run: runDatapathSuite},
		{Name: "scale", Short: "twill lab up --nodes 10 with 100 pods: lab start, time to all pods Ready, RSS of kubelet, containerd, twill agent and control plane", Run: runScaleSuite},
		{Name: "policy", Short: "policy change to enforcement in nftables (p50/p99) with 1,000 NetworkPolicies and 10,000 pod addresses; rule-set memory", Run: runPolicySuite},
		{Name: "services", Short: "twill's service proxy against kube-proxy (iptables, nftables) at 1,000, 10,000 and 50,000 services: new-connection rate and connect latency to a ClusterIP, one added service to programmed, full resync, memory", Run: runServicesSuite},
	}
}

// Select returns the named suite, or every suite for "all".
func Select(name string) ([]Suite, error) {
	all := Suites()
	if name == AllSuites {
		return all, nil
	}
	names := make([]string, 0, len(all)+1)
	for _, s := range all {
		if s.Name == name {
			return []Suite{s}, nil
		}
		names = append(names, s.Name)
	}
	return nil, fmt.Errorf("no benchmark suite %q (have: %s, or %s)", name, strings.Join(names, ", "), AllSuites)
}
