package policy

import (
	"maps"
	"sync"

	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"

	"github.com/twill-net/twill/internal/datapath"
)

// Calculator holds the policy inputs and keeps their compiled form up to date as they change.
// Updates may come in any order (a pod before its namespace, a policy before the pods it
// selects): the state depends only on the current inputs. It is safe for concurrent use.
//
// Work per update is proportional to what changed: a pod update touches its identity (and,
// for a new identity, one check per selector); a policy update recompiles that policy alone
// and evaluates only selectors no other policy already uses. Only a change in the label keys
// that selectors read (a policy selecting on a key no other uses) recomputes every identity.
// State copies what the calculator keeps up to date (the address map, named ports, the rules
// in evaluation order) rather than working it out again from every pod and policy.
type Calculator struct {
	mu sync.Mutex

	namespaces  map[string]map[string]string // labels, with the name label added
	nodes       map[string]Node
	endpoints   map[datapath.PodRef]*endpointState
	byNamespace map[string]map[datapath.PodRef]*endpointState
	policies    map[policyKey]*compiledPolicy

	selectors  map[datapath.SetName]*selectorState
	podKeys    map[string]int // label keys pod selectors read, with reference counts
	nsKeys     map[string]int // label keys namespace selectors read
	identities map[string]*identity
	byID       map[datapath.Identity]*identity
	nextID     datapath.Identity
	addrs      addressIndex
	// tiers caches the rules in evaluation order; nil when a policy changed since.
	tiers *sortedTiers
}

type endpointState struct {
	ep       Endpoint
	identity *identity
}

// policyKey tells NetworkPolicies (namespaced) from ClusterNetworkPolicies (namespace "").
type policyKey struct {
	cluster bool
	ref     datapath.PolicyRef
}

// NewCalculator returns a calculator with no inputs: every pod would be allowed everything.
func NewCalculator() *Calculator {
	return &Calculator{
		namespaces:  map[string]map[string]string{},
		nodes:       map[string]Node{},
		endpoints:   map[datapath.PodRef]*endpointState{},
		byNamespace: map[string]map[datapath.PodRef]*endpointState{},
		policies:    map[policyKey]*compiledPolicy{},
		selectors:   map[datapath.SetName]*selectorState{},
		podKeys:     map[string]int{},
		nsKeys:      map[string]int{},
		identities:  map[string]*identity{},
		byID:        map[datapath.Identity]*identity{},
		nextID:      firstIdentity,
		addrs:       newAddressIndex(),
	}
}

// UpsertEndpoint adds or replaces a pod.
func (c *Calculator) UpsertEndpoint(e Endpoint) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.Labels = maps.Clone(e.Labels)
	ref := e.Ref()
	es, ok := c.endpoints[ref]
	if !ok {
		es = &endpointState{}
		c.endpoints[ref] = es
		if c.byNamespace[e.Namespace] == nil {
			c.byNamespace[e.Namespace] = map[datapath.PodRef]*endpointState{}
		}
		c.byNamespace[e.Namespace][ref] = es
	} else {
		c.addrs.unclaim(es)
	}
	es.ep = e
	c.assignIdentity(es)
	c.addrs.claim(es)
}

// DeleteEndpoint removes a pod; deleting an unknown pod does nothing.
func (c *Calculator) DeleteEndpoint(namespace, name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ref := datapath.PodRef{Namespace: namespace, Name: name}
	es, ok := c.endpoints[ref]
	if !ok {
		return
	}
	c.addrs.unclaim(es)
	c.releaseIdentity(es)
	delete(c.endpoints, ref)
	delete(c.byNamespace[namespace], ref)
	if len(c.byNamespace[namespace]) == 0 {
		delete(c.byNamespace, namespace)
	}
}

// UpsertNamespace adds or replaces a namespace's labels; its pods' identities follow.
func (c *Calculator) UpsertNamespace(ns Namespace) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := maps.Clone(ns.Labels)
	if l == nil {
		l = map[string]string{}
	}
	l[NamespaceNameLabel] = ns.Name
	c.namespaces[ns.Name] = l
	c.reidentify(c.byNamespace[ns.Name])
}

// DeleteNamespace forgets a namespace's labels (its pods keep only the name label).
func (c *Calculator) DeleteNamespace(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.namespaces, name)
	c.reidentify(c.byNamespace[name])
}

// UpsertNode adds or replaces a node (its labels and addresses).
func (c *Calculator) UpsertNode(n Node) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n.Labels = maps.Clone(n.Labels)
	c.nodes[n.Name] = n
}

// DeleteNode removes a node.
func (c *Calculator) DeleteNode(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.nodes, name)
}

// UpsertNetworkPolicy adds or replaces a NetworkPolicy.
func (c *Calculator) UpsertNetworkPolicy(np *networkingv1.NetworkPolicy) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setPolicy(policyKey{ref: datapath.PolicyRef{Namespace: np.Namespace, Name: np.Name}}, compileNetworkPolicy(np))
}

// DeleteNetworkPolicy removes a NetworkPolicy.
func (c *Calculator) DeleteNetworkPolicy(namespace, name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setPolicy(policyKey{ref: datapath.PolicyRef{Namespace: namespace, Name: name}}, nil)
}

// UpsertClusterNetworkPolicy adds or replaces a ClusterNetworkPolicy.
func (c *Calculator) UpsertClusterNetworkPolicy(cnp *v1alpha2.ClusterNetworkPolicy) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setPolicy(policyKey{cluster: true, ref: datapath.PolicyRef{Name: cnp.Name}}, compileClusterNetworkPolicy(cnp))
}

// DeleteClusterNetworkPolicy removes a ClusterNetworkPolicy.
func (c *Calculator) DeleteClusterNetworkPolicy(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setPolicy(policyKey{cluster: true, ref: datapath.PolicyRef{Name: name}}, nil)
}

// setPolicy replaces the compiled policy under key (nil deletes it). The new policy's
// selectors are taken before the old one's are released, so selectors both use keep their
// members and nothing is evaluated twice.
func (c *Calculator) setPolicy(key policyKey, p *compiledPolicy) {
	old := c.policies[key]
	c.tiers = nil
	keysChanged := false
	if p != nil {
		keysChanged = c.useSelectors(p.identitySets)
		c.policies[key] = p
	} else {
		delete(c.policies, key)
	}
	if old != nil {
		keysChanged = c.dropSelectors(old.identitySets) || keysChanged
	}
	if keysChanged {
		c.reidentify(c.endpoints)
	}
}
