package nftsvc

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/twill-net/twill/internal/datapath"
)

func addrs(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddr(a)
	}
	return out
}

func backend(addr string, port uint16, node string) datapath.Backend {
	return datapath.Backend{Addr: netip.MustParseAddr(addr), Port: port, Node: node}
}

// goldenServices covers every feature: several endpoints, UDP and SCTP, NodePort with
// externalTrafficPolicy Local and affinity, external IPs, dual stack with
// internalTrafficPolicy Local, and a service without endpoints.
func goldenServices() []datapath.Service {
	web := []datapath.Backend{backend("10.0.1.1", 8080, "n1"), backend("10.0.2.1", 8080, "n2")}
	return []datapath.Service{
		{Key: datapath.ServiceKey{Namespace: "prod", Name: "web"}, ClusterIPs: addrs("10.96.0.10"),
			Ports: []datapath.ServicePort{
				{Name: "http", Protocol: datapath.ProtocolTCP, Port: 80, Backends: web, LocalBackends: web[:1]},
				{Name: "dns", Protocol: datapath.ProtocolUDP, Port: 53,
					Backends: []datapath.Backend{backend("10.0.1.2", 5353, "n1")}},
				{Name: "sig", Protocol: datapath.ProtocolSCTP, Port: 9999,
					Backends: []datapath.Backend{backend("10.0.2.2", 9999, "n2")}},
			}},
		{Key: datapath.ServiceKey{Namespace: "prod", Name: "shop"}, ClusterIPs: addrs("10.96.0.20"),
			ExternalIPs: addrs("203.0.113.7"), ExternalLocal: true, AffinityTimeout: 3 * time.Hour,
			Ports: []datapath.ServicePort{
				{Name: "https", Protocol: datapath.ProtocolTCP, Port: 443, NodePort: 30443, Backends: web, LocalBackends: web[:1]},
			}},
		{Key: datapath.ServiceKey{Namespace: "prod", Name: "dual"}, ClusterIPs: addrs("10.96.0.30", "fd00:96::30"),
			InternalLocal: true,
			Ports: []datapath.ServicePort{
				{Name: "", Protocol: datapath.ProtocolTCP, Port: 8443, NodePort: 31443,
					Backends: []datapath.Backend{backend("10.0.1.3", 443, "n1"), backend("10.0.2.3", 443, "n2"),
						backend("fd00:1::3", 443, "n1"), backend("fd00:2::3", 443, "n2")},
					LocalBackends: []datapath.Backend{backend("10.0.1.3", 443, "n1"), backend("fd00:1::3", 443, "n1")}},
			}},
		{Key: datapath.ServiceKey{Namespace: "dev", Name: "empty"}, ClusterIPs: addrs("10.96.0.40"),
			Ports: []datapath.ServicePort{
				{Name: "http", Protocol: datapath.ProtocolTCP, Port: 80, NodePort: 30080},
			}},
	}
}

// manyServices returns n ClusterIP services with two endpoints each, numbered from first.
func manyServices(first, n int) []datapath.Service {
	out := make([]datapath.Service, n)
	for i := range n {
		j := first + i
		ip := netip.AddrFrom4([4]byte{10, 100 + byte(j>>16), byte(j >> 8), byte(j)})
		out[i] = datapath.Service{Key: datapath.ServiceKey{Namespace: "bulk", Name: fmt.Sprintf("svc-%d", j)},
			ClusterIPs: []netip.Addr{ip},
			Ports: []datapath.ServicePort{{Name: "http", Protocol: datapath.ProtocolTCP, Port: 80,
				Backends: []datapath.Backend{
					{Addr: netip.AddrFrom4([4]byte{10, 200 + byte(j>>16), byte(j >> 8), byte(j)}), Port: 8080},
					{Addr: netip.AddrFrom4([4]byte{10, 220 + byte(j>>16), byte(j >> 8), byte(j)}), Port: 8080},
				}}}}
	}
	return out
}
