package kube

import (
	"os"
	"testing"

	clientfeatures "k8s.io/client-go/features"
	"k8s.io/client-go/rest"
)

// Clients made by NewClients start their informers with a LIST (cheaper for the API server
// and the agent than a WatchList stream) and ask for uncompressed responses; the other
// client-go features keep their defaults.
func TestClientsListAndDoNotCompress(t *testing.T) {
	if os.Getenv("KUBE_FEATURE_WatchListClient") != "" {
		t.Skip("KUBE_FEATURE_WatchListClient is set: the operator's choice wins")
	}
	c, err := NewClients(&rest.Config{Host: "https://127.0.0.1:6443"}, "twill-test")
	if err != nil {
		t.Fatal(err)
	}
	gates := clientfeatures.FeatureGates()
	if gates.Enabled(clientfeatures.WatchListClient) {
		t.Error("WatchListClient is on after NewClients, want informers to LIST")
	}
	if !gates.Enabled(clientfeatures.InOrderInformers) {
		t.Error("InOrderInformers (on by default) was turned off with WatchListClient")
	}
	if !c.Config.DisableCompression {
		t.Error("the clients ask for compressed responses")
	}
}
