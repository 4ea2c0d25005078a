package policy

import (
	"cmp"
	"maps"
	"slices"
	"strings"

	"github.com/twill-net/twill/internal/datapath"
)

// AuditReport is the "looks secured but is wide open" check: what no policy covers, and
// policies that do less than they seem to. Every list is sorted.
type AuditReport struct {
	// Unselected are pods no policy selects in a direction: NetworkPolicy does not isolate
	// them and no ClusterNetworkPolicy has a rule for them there, so all such traffic passes.
	Unselected []PodDirection
	// NamespacesWithoutDefaultDeny are namespaces with no NetworkPolicy selecting all their
	// pods in a direction: a new pod there starts open in that direction.
	NamespacesWithoutDefaultDeny []NamespaceDirection
	// SelectingNothing are policies whose subject matches no pod today.
	SelectingNothing []PolicyFinding
	// Problems are parts of policies that cannot be enforced as written (invalid selectors,
	// unsupported peers); each says what is done instead.
	Problems []PolicyFinding
}

// PodDirection is a pod and a direction.
type PodDirection struct {
	Pod       datapath.PodRef
	Direction datapath.Direction
}

// NamespaceDirection is a namespace and a direction.
type NamespaceDirection struct {
	Namespace string
	Direction datapath.Direction
}

// PolicyFinding names a policy and, for problems, what is wrong.
type PolicyFinding struct {
	Tier   datapath.Tier
	Policy datapath.PolicyRef
	Detail string
}

// Audit reports what no policy covers. Namespaces are those known as objects or by a pod.
func (c *Calculator) Audit() AuditReport {
	c.mu.Lock()
	defer c.mu.Unlock()
	var r AuditReport
	dirs := []datapath.Direction{datapath.Ingress, datapath.Egress}

	// covered[dir] holds the subject sets of every policy that acts in dir.
	covered := map[datapath.Direction][]datapath.SetName{}
	defaultDeny := map[NamespaceDirection]bool{}
	for _, p := range c.policies {
		for _, d := range dirs {
			if p.isolates[d] || (p.tier != datapath.TierNetworkPolicy && len(p.rules[d]) > 0) {
				covered[d] = append(covered[d], p.subject)
			}
			if p.isolates[d] && p.wholeNamespace {
				defaultDeny[NamespaceDirection{p.ref.Namespace, d}] = true
			}
		}
		if p.subject != "" && len(c.selectors[p.subject].members) == 0 {
			r.SelectingNothing = append(r.SelectingNothing, PolicyFinding{Tier: p.tier, Policy: p.ref})
		}
		for _, msg := range p.problems {
			r.Problems = append(r.Problems, PolicyFinding{Tier: p.tier, Policy: p.ref, Detail: msg})
		}
	}

	for ref, es := range c.endpoints {
		for _, d := range dirs {
			if !slices.ContainsFunc(covered[d], func(set datapath.SetName) bool { return c.selectors[set].members[es.identity.id] }) {
				r.Unselected = append(r.Unselected, PodDirection{Pod: ref, Direction: d})
			}
		}
	}

	namespaces := map[string]bool{}
	for ns := range c.namespaces {
		namespaces[ns] = true
	}
	for ns := range c.byNamespace {
		namespaces[ns] = true
	}
	for _, ns := range slices.Sorted(maps.Keys(namespaces)) {
		for _, d := range dirs {
			if !defaultDeny[NamespaceDirection{ns, d}] {
				r.NamespacesWithoutDefaultDeny = append(r.NamespacesWithoutDefaultDeny, NamespaceDirection{ns, d})
			}
		}
	}

	slices.SortFunc(r.Unselected, func(a, b PodDirection) int {
		return cmp.Or(comparePodRefs(a.Pod, b.Pod), strings.Compare(string(a.Direction), string(b.Direction)))
	})
	sortFindings := func(fs []PolicyFinding) {
		slices.SortFunc(fs, func(a, b PolicyFinding) int {
			return cmp.Or(strings.Compare(string(a.Tier), string(b.Tier)), comparePolicyRefs(a.Policy, b.Policy),
				strings.Compare(a.Detail, b.Detail))
		})
	}
	sortFindings(r.SelectingNothing)
	sortFindings(r.Problems)
	return r
}
