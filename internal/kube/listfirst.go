package kube

import (
	"os"
	"sync"

	clientfeatures "k8s.io/client-go/features"
)

// listNotWatchList makes client-go's informers start with a LIST, not a WatchList stream
// (the WatchListClient feature, on by default since client-go 1.35): measured in the lab, an
// agent restart with 10,000 Services and 10,000 EndpointSlices cost the API server about
// 0.8 s of CPU less and the agent 0.4 s less with one LIST per resource than with 20,000
// watch events, on a machine where both share the cores. The stream's gain, a bounded
// memory peak on the API server for huge lists, matters less to twill's objects than the
// time a restarted agent leaves services unprogrammed. KUBE_FEATURE_WatchListClient=true
// still turns the stream on.
//
// It runs at start-up (init), before any client reads the gates: replacing them later makes
// client-go log an error, and a process (the CLI's benchmarks) may read them before it
// makes the agent's kind of clients.
var listNotWatchList = sync.OnceFunc(func() {
	if os.Getenv("KUBE_FEATURE_"+string(clientfeatures.WatchListClient)) != "" {
		return // the operator's choice, read by client-go's own gates
	}
	clientfeatures.ReplaceFeatureGates(noWatchList{clientfeatures.FeatureGates()})
})

// noWatchList is client-go's gates with WatchListClient off.
type noWatchList struct{ clientfeatures.Gates }

func (g noWatchList) Enabled(f clientfeatures.Feature) bool {
	return f != clientfeatures.WatchListClient && g.Gates.Enabled(f)
}

func init() { listNotWatchList() }
