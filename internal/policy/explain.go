package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/twill-net/twill/internal/datapath"
)

// Target is one side of a connection to explain: a pod (by namespace/name) or an address.
type Target struct {
	Pod  datapath.PodRef // set for a pod
	Addr netip.Addr      // set for an address
}

// ParseTarget reads "namespace/name" as a pod and anything else as an IP address.
func ParseTarget(s string) (Target, error) {
	if ns, name, ok := strings.Cut(s, "/"); ok {
		if ns == "" || name == "" {
			return Target{}, fmt.Errorf("pod %q: want namespace/name", s)
		}
		return Target{Pod: datapath.PodRef{Namespace: ns, Name: name}}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return Target{}, fmt.Errorf("%q is neither namespace/name nor an IP address: %w", s, err)
	}
	return Target{Addr: a}, nil
}

func (t Target) String() string {
	if t.Addr.IsValid() {
		return t.Addr.String()
	}
	return t.Pod.String()
}

// Explanation is the verdict for a connection and the packet it was judged as.
type Explanation struct {
	datapath.Verdict
	Packet datapath.Packet
}

// ErrUnknownPod is returned when a pod target is not (or no longer) known.
var ErrUnknownPod = errors.New("unknown pod")

// Explain says whether a connection from src to dst on port/proto would be allowed and which
// rules decide it. It evaluates the very state State returns, with the evaluator the datapath
// is tested against, so what it says and what the datapath does cannot differ. A pod with
// several addresses is judged by the one of the other side's family (IPv4 first).
func (c *Calculator) Explain(src, dst Target, port uint16, proto datapath.Protocol) (Explanation, error) {
	srcAddrs, err := c.addresses(src)
	if err != nil {
		return Explanation{}, err
	}
	dstAddrs, err := c.addresses(dst)
	if err != nil {
		return Explanation{}, err
	}
	p := datapath.Packet{Protocol: proto, Port: port}
	found := false
	for _, sa := range srcAddrs {
		for _, da := range dstAddrs {
			if !found && sa.Is4() == da.Is4() {
				p.Src, p.Dst, found = sa, da, true
			}
		}
	}
	if !found {
		return Explanation{}, fmt.Errorf("%s and %s have no address of the same family", src, dst)
	}
	state := c.State()
	return Explanation{Verdict: datapath.NewPolicyEvaluator(&state).Evaluate(p), Packet: p}, nil
}

// addresses lists a target's addresses, IPv4 first.
func (c *Calculator) addresses(t Target) ([]netip.Addr, error) {
	if t.Addr.IsValid() {
		return []netip.Addr{t.Addr}, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	es, ok := c.endpoints[t.Pod]
	if !ok {
		return nil, fmt.Errorf("%s: %w", t.Pod, ErrUnknownPod)
	}
	if len(es.ep.IPs) == 0 {
		return nil, fmt.Errorf("%s has no address yet", t.Pod)
	}
	var v4, v6 []netip.Addr
	for _, a := range es.ep.IPs {
		if a.Is4() {
			v4 = append(v4, a)
		} else {
			v6 = append(v6, a)
		}
	}
	return append(v4, v6...), nil
}
