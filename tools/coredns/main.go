// Command coredns is the lab's cluster DNS: CoreDNS from its pinned module, built with only the
// plugins the lab's Corefile uses (internal/lab/labctl/dns.go). The full plugin set pulls in
// every cloud SDK and takes over an hour to build on a 2-core machine; this takes minutes.
package main

import (
	"github.com/coredns/coredns/coremain"

	// The plugins of the lab's Corefile; CoreDNS orders them by its own directive list.
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"
)

func main() { coremain.Run() }
