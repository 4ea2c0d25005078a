package nftsvc

import (
	"net/netip"
	"slices"

	"github.com/twill-net/twill/internal/datapath"
)

// External and load balancer IPs are not allocated by the API server, so two services may
// name the same address, protocol and port. The table can hold one of them: the kernel
// refuses a second element under the same key, and a refused transaction would leave every
// service unserved. So each such frontend has one owner, the service that claimed it first
// (in key order on a Full), the others are served without it (and a warning says so), and
// when the owner lets it go the next claimant is rendered again and takes it.
type claimedFrontend struct {
	addr  netip.Addr
	proto datapath.Protocol
	port  uint16
}

type claims struct {
	owner   map[claimedFrontend]datapath.ServiceKey
	wanters map[claimedFrontend]map[datapath.ServiceKey]bool
	specs   map[datapath.ServiceKey]*datapath.Service // the last given, to render a service again
}

func newClaims() claims {
	return claims{owner: map[claimedFrontend]datapath.ServiceKey{}, wanters: map[claimedFrontend]map[datapath.ServiceKey]bool{},
		specs: map[datapath.ServiceKey]*datapath.Service{}}
}

func externalFrontends(s *datapath.Service) []claimedFrontend {
	var out []claimedFrontend
	for _, a := range s.ExternalIPs {
		for _, p := range s.Ports {
			out = append(out, claimedFrontend{addr: a.Unmap(), proto: p.Protocol, port: p.Port})
		}
	}
	return out
}

// release forgets key's wishes and claims; it returns the frontends it owned.
func (c *claims) release(key datapath.ServiceKey) []claimedFrontend {
	s := c.specs[key]
	if s == nil {
		return nil
	}
	var freed []claimedFrontend
	for _, f := range externalFrontends(s) {
		delete(c.wanters[f], key)
		if len(c.wanters[f]) == 0 {
			delete(c.wanters, f)
		}
		if owner, ok := c.owner[f]; ok && owner == key {
			delete(c.owner, f)
			freed = append(freed, f)
		}
	}
	delete(c.specs, key)
	return freed
}

// take records s and claims its frontends that nobody owns; it returns those another
// service owns.
func (c *claims) take(s *datapath.Service) (denied []claimedFrontend) {
	c.specs[s.Key] = s
	for _, f := range externalFrontends(s) {
		if c.wanters[f] == nil {
			c.wanters[f] = map[datapath.ServiceKey]bool{}
		}
		c.wanters[f][s.Key] = true
		if owner, ok := c.owner[f]; !ok {
			c.owner[f] = s.Key
		} else if owner != s.Key {
			denied = append(denied, f)
		}
	}
	return denied
}

// handOver gives each freed frontend nobody owns to its first remaining claimant (in key
// order) and returns the services that gained one, to be rendered again.
func (c *claims) handOver(freed []claimedFrontend) []datapath.ServiceKey {
	var gained []datapath.ServiceKey
	for _, f := range freed {
		if _, owned := c.owner[f]; owned || len(c.wanters[f]) == 0 {
			continue
		}
		keys := make([]datapath.ServiceKey, 0, len(c.wanters[f]))
		for k := range c.wanters[f] {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, compareKeys)
		c.owner[f] = keys[0]
		if !slices.Contains(gained, keys[0]) {
			gained = append(gained, keys[0])
		}
	}
	return gained
}

// ownedBy says whether key may serve f: it owns it.
func (c *claims) ownedBy(key datapath.ServiceKey) func(netip.Addr, *datapath.ServicePort) bool {
	return func(a netip.Addr, p *datapath.ServicePort) bool {
		owner, ok := c.owner[claimedFrontend{addr: a.Unmap(), proto: p.Protocol, port: p.Port}]
		return !ok || owner == key
	}
}
