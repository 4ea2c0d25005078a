// Package service is the agent's service calculator, the "Services + EndpointSlices → frontends
// → backends" step of twill's flow: fed the API's Service and EndpointSlice events in any order,
// it computes, for one node, the datapath.Service of every Service that node must serve (the
// job kube-proxy does) and hands the datapath only what changed since it last asked.
//
// It is pure Go with no syscalls. The upstream rules it applies (which endpoints are usable,
// which are local, the terminating fallback, which services are left out) are those of
// kube-proxy; rules.go says where each is made.
package service

import (
	"cmp"
	"slices"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/twill-net/twill/internal/datapath"
)

// Calculator keeps the services of one node. Events and Flush may come from different
// goroutines (the informers' and the apply loop's): every method locks.
//
// Work per event is proportional to the one service it concerns: slices are indexed by the
// service they belong to, and a Flush recomputes only the services marked dirty since the last
// one. With tens of thousands of services a change to one must not cost a walk over all.
type Calculator struct {
	node string

	mu sync.Mutex
	// frontends holds each served service's frontends (ports without backends) as computed
	// from its Service object; a Service the node does not serve (headless, ExternalName) has
	// no entry.
	frontends map[datapath.ServiceKey]datapath.Service
	// slices indexes EndpointSlices by their service, then by slice name.
	slices map[datapath.ServiceKey]map[string]*sliceInfo
	// sliceOwner says which service each known slice was indexed under, so that an update that
	// moves a slice (its service-name label changed) or a delete by name finds the old entry.
	sliceOwner map[sliceID]datapath.ServiceKey
	// dirty names the services touched since the last Flush.
	dirty map[datapath.ServiceKey]struct{}
	// flushed is what the last Flush handed out: the state the datapath is told it serves.
	flushed map[datapath.ServiceKey]datapath.Service
	// full makes the next Flush a Full one (first after a start, or requested).
	full bool
}

type sliceID struct{ namespace, name string }

// NewCalculator returns an empty calculator for the node named nodeName (endpoints whose
// nodeName is this one are its local backends). Its first Flush is Full.
func NewCalculator(nodeName string) *Calculator {
	return &Calculator{
		node:       nodeName,
		frontends:  map[datapath.ServiceKey]datapath.Service{},
		slices:     map[datapath.ServiceKey]map[string]*sliceInfo{},
		sliceOwner: map[sliceID]datapath.ServiceKey{},
		dirty:      map[datapath.ServiceKey]struct{}{},
		flushed:    map[datapath.ServiceKey]datapath.Service{},
		full:       true,
	}
}

// UpsertService records a Service added or updated.
func (c *Calculator) UpsertService(svc *corev1.Service) {
	key := datapath.ServiceKey{Namespace: svc.Namespace, Name: svc.Name}
	fe, served := frontendsOf(svc)
	c.mu.Lock()
	defer c.mu.Unlock()
	if served {
		c.frontends[key] = fe
	} else {
		delete(c.frontends, key)
	}
	c.dirty[key] = struct{}{}
}

// DeleteService records a Service gone.
func (c *Calculator) DeleteService(namespace, name string) {
	key := datapath.ServiceKey{Namespace: namespace, Name: name}
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.frontends, key)
	c.dirty[key] = struct{}{}
}

// UpsertEndpointSlice records an EndpointSlice added or updated. A slice without the
// kubernetes.io/service-name label belongs to no service and is ignored.
func (c *Calculator) UpsertEndpointSlice(s *discoveryv1.EndpointSlice) {
	id := sliceID{s.Namespace, s.Name}
	owner := s.Labels[discoveryv1.LabelServiceName]
	var info *sliceInfo
	if owner != "" {
		info = sliceInfoOf(s)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.forgetSliceLocked(id)
	if info == nil {
		return
	}
	key := datapath.ServiceKey{Namespace: s.Namespace, Name: owner}
	bySlice := c.slices[key]
	if bySlice == nil {
		bySlice = map[string]*sliceInfo{}
		c.slices[key] = bySlice
	}
	bySlice[s.Name] = info
	c.sliceOwner[id] = key
	c.dirty[key] = struct{}{}
}

// DeleteEndpointSlice records an EndpointSlice gone.
func (c *Calculator) DeleteEndpointSlice(namespace, name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.forgetSliceLocked(sliceID{namespace, name})
}

func (c *Calculator) forgetSliceLocked(id sliceID) {
	key, ok := c.sliceOwner[id]
	if !ok {
		return
	}
	delete(c.sliceOwner, id)
	delete(c.slices[key], id.name)
	if len(c.slices[key]) == 0 {
		delete(c.slices, key)
	}
	c.dirty[key] = struct{}{}
}

// RequestFull makes the next Flush a Full one: after the datapath failed to apply a change
// (its state is then unknown) or to repair a state edited behind twill's back.
func (c *Calculator) RequestFull() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.full = true
}

// Pending says whether a Flush now would have anything to hand out (it may still find that
// the touched services came back to what they were).
func (c *Calculator) Pending() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.full || len(c.dirty) > 0
}

// Flush returns what changed since the last Flush: the services whose desired state differs
// (Set) and those no longer served (Removed), each sorted by key; or, when a Full one is due,
// every served service. Nothing changed gives empty changes (not Full).
func (c *Calculator) Flush() datapath.ServiceChanges {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ch datapath.ServiceChanges
	if len(c.flushed) == 0 {
		// The first flush after a start: sized at once for every service known.
		c.flushed = make(map[datapath.ServiceKey]datapath.Service, len(c.frontends))
	}
	for key := range c.dirty {
		want, served := c.serviceLocked(key)
		had, wasServed := c.flushed[key]
		switch {
		case served && (!wasServed || !equalServices(had, want)):
			c.flushed[key] = want
			if !c.full { // a Full hands out every service below
				ch.Set = append(ch.Set, want)
			}
		case !served && wasServed:
			delete(c.flushed, key)
			ch.Removed = append(ch.Removed, key)
		}
	}
	// A map keeps the room it once grew to, and clearing or ranging over it costs that room:
	// after the first flush of 50,000 services, clear would walk them all on every flush.
	if len(c.dirty) > 64 {
		c.dirty = map[datapath.ServiceKey]struct{}{}
	} else {
		clear(c.dirty)
	}
	if c.full {
		c.full = false
		ch = datapath.ServiceChanges{Full: true, Set: make([]datapath.Service, 0, len(c.flushed))}
		for _, s := range c.flushed {
			ch.Set = append(ch.Set, s)
		}
	}
	slices.SortFunc(ch.Set, func(a, b datapath.Service) int { return compareKeys(a.Key, b.Key) })
	slices.SortFunc(ch.Removed, compareKeys)
	return ch
}

// Services returns every service as the last Flush left them, sorted by key (for status output
// and tests).
func (c *Calculator) Services() []datapath.Service {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]datapath.Service, 0, len(c.flushed))
	for _, s := range c.flushed {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b datapath.Service) int { return compareKeys(a.Key, b.Key) })
	return out
}

// serviceLocked computes the desired state of one service from its frontends and its slices.
func (c *Calculator) serviceLocked(key datapath.ServiceKey) (datapath.Service, bool) {
	fe, ok := c.frontends[key]
	if !ok {
		return datapath.Service{}, false
	}
	s := fe
	s.Ports = make([]datapath.ServicePort, len(fe.Ports))
	for i, p := range fe.Ports {
		eps := endpointsForPort(c.slices[key], &fe, p)
		p.Backends, p.LocalBackends = usableBackends(eps, c.node)
		s.Ports[i] = p
	}
	return s, true
}

func compareKeys(a, b datapath.ServiceKey) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}
