package nftsvc

import (
	"net/netip"
	"testing"
	"time"

	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/testutil"
)

// The kernel world: node n1 (172.31.0.1, fd00:31::1) with backends b1 (on n1) and b2 (on
// "n2" as far as the services say; its namespace hangs off this node so packets reach it),
// a client pod, and x, a machine outside the cluster (also the node's default route).
var (
	nodeIP   = netip.MustParseAddr("172.31.0.1")
	nodeIP6  = netip.MustParseAddr("fd00:31::1")
	clientIP = netip.MustParseAddr("10.0.2.3")
	outsider = netip.MustParseAddr("192.0.2.10")
)

func ep(addr string, port uint16, node string) datapath.Backend { return backend(addr, port, node) }

func kernelServices() []datapath.Service {
	b1, b2 := ep("10.0.1.1", 8080, "n1"), ep("10.0.1.2", 8080, "n2")
	b16, b26 := ep("fd00:1::1", 8080, "n1"), ep("fd00:1::2", 8080, "n2")
	both := []datapath.Backend{b1, b2, b16, b26}
	key := func(n string) datapath.ServiceKey { return datapath.ServiceKey{Namespace: "default", Name: n} }
	return []datapath.Service{
		{Key: key("web"), ClusterIPs: addrs("10.96.0.10", "fd00:96::10"), ExternalIPs: addrs("203.0.113.10"),
			Ports: []datapath.ServicePort{
				{Name: "http", Protocol: datapath.ProtocolTCP, Port: 80, NodePort: 30080, Backends: both,
					LocalBackends: []datapath.Backend{b1, b16}},
				{Name: "dns", Protocol: datapath.ProtocolUDP, Port: 53,
					Backends: []datapath.Backend{ep("10.0.1.1", 5353, "n1"), ep("10.0.1.2", 5353, "n2")}},
			}},
		{Key: key("sticky"), ClusterIPs: addrs("10.96.0.20"), AffinityTimeout: time.Minute,
			Ports: []datapath.ServicePort{{Name: "http", Protocol: datapath.ProtocolTCP, Port: 80,
				Backends: []datapath.Backend{b1, b2}, LocalBackends: []datapath.Backend{b1}}}},
		{Key: key("empty"), ClusterIPs: addrs("10.96.0.30"),
			Ports: []datapath.ServicePort{
				{Name: "http", Protocol: datapath.ProtocolTCP, Port: 80, NodePort: 30090},
				{Name: "dns", Protocol: datapath.ProtocolUDP, Port: 53},
			}},
		{Key: key("local"), ClusterIPs: addrs("10.96.0.40"), ExternalLocal: true,
			Ports: []datapath.ServicePort{{Name: "http", Protocol: datapath.ProtocolTCP, Port: 80, NodePort: 30400,
				Backends: []datapath.Backend{b1, b2}, LocalBackends: []datapath.Backend{b1}}}},
		{Key: key("internal"), ClusterIPs: addrs("10.96.0.60"), InternalLocal: true,
			Ports: []datapath.ServicePort{{Name: "http", Protocol: datapath.ProtocolTCP, Port: 80,
				Backends: []datapath.Backend{b1, b2}, LocalBackends: []datapath.Backend{b1}}}},
		{Key: key("self"), ClusterIPs: addrs("10.96.0.50"),
			Ports: []datapath.ServicePort{{Name: "http", Protocol: datapath.ProtocolTCP, Port: 80,
				Backends: []datapath.Backend{b1}, LocalBackends: []datapath.Backend{b1}}}},
	}
}

type kernelLab struct {
	*lab
	r                   *Reconciler
	client, b1, b2, out *labNS
}

func newKernelLab(t *testing.T) *kernelLab {
	testutil.RequireRoot(t)
	l := newLab(t, nodeIP.String(), nodeIP6.String())
	k := &kernelLab{lab: l,
		client: l.pod("client", clientIP.String(), "fd00:2::3"),
		b1:     l.pod("b1", "10.0.1.1", "fd00:1::1"),
		b2:     l.pod("b2", "10.0.1.2", "fd00:1::2"),
		out:    l.pod("x", outsider.String(), "2001:db8::10"),
	}
	l.defaultRouteVia(k.out)
	serve(t, k.b1, "b1", []uint16{8080}, []uint16{5353})
	serve(t, k.b2, "b2", []uint16{8080}, []uint16{5353})
	l.must(l.inNode(func() error {
		var err error
		k.r, err = NewKernel(nil)
		return err
	}))
	l.apply(k.r, datapath.ServiceChanges{Full: true, Set: kernelServices()})
	return k
}

// askOK asks and fails the test on anything but an answer; a slow first answer is retried.
func (k *kernelLab) askOK(t *testing.T, from *labNS, network string, dst netip.AddrPort) answer {
	t.Helper()
	a, err := ask(from, network, dst, 2*time.Second)
	if err == errTimeout { // the machine may be busy: a second, longer chance
		a, err = ask(from, network, dst, 8*time.Second)
	}
	if err != nil {
		t.Fatalf("%s %s -> %s: %v", from.name, network, dst, err)
	}
	return a
}

func (k *kernelLab) nodeNS() *labNS { return k.node }

func TestKernelServices(t *testing.T) {
	k := newKernelLab(t)
	at := func(a string, port uint16) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr(a), port) }

	t.Run("cluster IP TCP reaches both backends", func(t *testing.T) {
		seen := map[string]int{}
		for range 40 {
			a := k.askOK(t, k.client, "tcp", at("10.96.0.10", 80))
			seen[a.backend]++
			if a.client != clientIP {
				t.Errorf("backend saw client %s, want %s (no masquerade inside the cluster)", a.client, clientIP)
			}
		}
		if seen["b1"] == 0 || seen["b2"] == 0 {
			t.Errorf("40 connections reached %v, want both backends", seen)
		}
	})
	t.Run("cluster IP UDP", func(t *testing.T) {
		seen := map[string]int{}
		for range 30 {
			seen[k.askOK(t, k.client, "udp", at("10.96.0.10", 53)).backend]++
		}
		if seen["b1"] == 0 || seen["b2"] == 0 {
			t.Errorf("30 datagrams reached %v, want both backends", seen)
		}
	})
	t.Run("cluster IP IPv6", func(t *testing.T) {
		a := k.askOK(t, k.client, "tcp", at("fd00:96::10", 80))
		if a.client != netip.MustParseAddr("fd00:2::3") {
			t.Errorf("backend saw %s", a.client)
		}
	})
	t.Run("cluster IP from the node itself", func(t *testing.T) {
		k.askOK(t, k.nodeNS(), "tcp", at("10.96.0.10", 80))
	})
	t.Run("NodePort from outside, masqueraded", func(t *testing.T) {
		a := k.askOK(t, k.out, "tcp", netip.AddrPortFrom(nodeIP, 30080))
		if a.client == outsider {
			t.Errorf("backend saw the outside client %s: externalTrafficPolicy Cluster must masquerade", a.client)
		}
		k.askOK(t, k.out, "tcp", netip.AddrPortFrom(nodeIP6, 30080))
	})
	t.Run("NodePort from the node itself", func(t *testing.T) {
		k.askOK(t, k.nodeNS(), "tcp", netip.AddrPortFrom(nodeIP, 30080))
		// Loopback is no NodePort address: nothing listens there.
		if _, err := ask(k.nodeNS(), "tcp", at("127.0.0.1", 30080), time.Second); !refused(err) {
			t.Errorf("127.0.0.1:30080 answered %v, want connection refused", err)
		}
	})
	t.Run("external IP", func(t *testing.T) {
		k.askOK(t, k.out, "tcp", at("203.0.113.10", 80))
		k.askOK(t, k.client, "tcp", at("203.0.113.10", 80))
	})
	t.Run("externalTrafficPolicy Local keeps the client address", func(t *testing.T) {
		for range 10 {
			a := k.askOK(t, k.out, "tcp", netip.AddrPortFrom(nodeIP, 30400))
			if a.backend != "b1" || a.client != outsider {
				t.Fatalf("answer %+v, want the local backend b1 seeing %s", a, outsider)
			}
		}
	})
	t.Run("internalTrafficPolicy Local picks local endpoints only", func(t *testing.T) {
		for range 10 {
			if a := k.askOK(t, k.client, "tcp", at("10.96.0.60", 80)); a.backend != "b1" {
				t.Fatalf("answer %+v, want the local backend b1", a)
			}
		}
	})
	t.Run("affinity keeps one backend", func(t *testing.T) {
		first := k.askOK(t, k.client, "tcp", at("10.96.0.20", 80)).backend
		for range 20 {
			if got := k.askOK(t, k.client, "tcp", at("10.96.0.20", 80)).backend; got != first {
				t.Fatalf("affinity broken: %s after %s", got, first)
			}
		}
	})
	t.Run("no endpoints refuses at once", func(t *testing.T) {
		for _, c := range []struct {
			network string
			dst     netip.AddrPort
		}{{"tcp", at("10.96.0.30", 80)}, {"udp", at("10.96.0.30", 53)}, {"tcp", netip.AddrPortFrom(nodeIP, 30090)}} {
			start := time.Now()
			_, err := ask(k.client, c.network, c.dst, 3*time.Second)
			if !refused(err) {
				t.Errorf("%s %s: %v, want connection refused", c.network, c.dst, err)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("%s %s took %v to fail", c.network, c.dst, d)
			}
		}
	})
	t.Run("hairpin: a backend reaches itself", func(t *testing.T) {
		a := k.askOK(t, k.b1, "tcp", at("10.96.0.50", 80))
		if a.backend != "b1" {
			t.Errorf("answer %+v", a)
		}
	})
	t.Run("endpoints change and removal", func(t *testing.T) {
		svcs := kernelServices()
		// "empty" gets b2: it answers now.
		svcs[2].Ports[0].Backends = []datapath.Backend{ep("10.0.1.2", 8080, "n2")}
		k.apply(k.r, datapath.ServiceChanges{Set: svcs[2:3]})
		if a := k.askOK(t, k.client, "tcp", at("10.96.0.30", 80)); a.backend != "b2" {
			t.Errorf("answer %+v, want b2", a)
		}
		// "web" goes: its cluster IP no longer translates (nothing there: the client times out).
		k.apply(k.r, datapath.ServiceChanges{Removed: []datapath.ServiceKey{svcs[0].Key}})
		if _, err := ask(k.client, "tcp", at("10.96.0.10", 80), 500*time.Millisecond); err == nil {
			t.Error("a removed service still answers")
		}
		if st := k.r.Stats(); st.Updates != 2 || st.Rebuilds != 1 || st.Failures != 0 {
			t.Errorf("stats %+v, want 1 rebuild and 2 updates", st)
		}
		// A Full brings it back in one step.
		k.apply(k.r, datapath.ServiceChanges{Full: true, Set: kernelServices()})
		k.askOK(t, k.client, "tcp", at("10.96.0.10", 80))
	})
}
