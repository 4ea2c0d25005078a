package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/twill-net/twill/internal/datapath"
)

// labelSelector is a parsed metav1.LabelSelector that remembers when it selects nothing
// (an invalid selector), since labels.Nothing and labels.Everything print alike.
type labelSelector struct {
	sel  labels.Selector
	none bool
}

var everything = labelSelector{sel: labels.Everything()}

// parseSelector reads a selector; an invalid one selects nothing (and is reported), so a
// mistake never widens what a policy selects.
func parseSelector(ls *metav1.LabelSelector) (labelSelector, error) {
	sel, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		return labelSelector{sel: labels.Nothing(), none: true}, fmt.Errorf("invalid label selector: %w", err)
	}
	return labelSelector{sel: sel}, nil
}

func (s labelSelector) String() string {
	if s.none {
		return "<nothing>"
	}
	return s.sel.String()
}

func (s labelSelector) matches(l map[string]string) bool {
	return !s.none && s.sel.Matches(labels.Set(l))
}

// keys lists the label keys the selector reads.
func (s labelSelector) keys() []string {
	if s.none {
		return nil
	}
	reqs, _ := s.sel.Requirements()
	keys := make([]string, len(reqs))
	for i, r := range reqs {
		keys[i] = r.Key()
	}
	return keys
}

// identitySelector picks pods: those matching pod in namespace (when set) or in the namespaces
// matching nsSel. Every peer and subject of both policy kinds is one of these.
type identitySelector struct {
	namespace string // exact namespace, as for a NetworkPolicy's own namespace; "" = any
	nsSel     labelSelector
	pod       labelSelector
}

// canonical is the selector's identity: equal selectors, wherever they come from, share one
// set.
func (s identitySelector) canonical() string {
	return fmt.Sprintf("ns=%q nsSel=%q pod=%q", s.namespace, s.nsSel.String(), s.pod.String())
}

// describe writes the selector as a user reads it.
func (s identitySelector) describe() string {
	pods := "all pods"
	if p := s.pod.String(); p != "" {
		pods = "pods " + p
	}
	switch {
	case s.namespace != "":
		return pods + " in namespace " + s.namespace
	case s.nsSel.String() == "":
		return pods + " in all namespaces"
	}
	return pods + " in namespaces " + s.nsSel.String()
}

func (s identitySelector) setName() datapath.SetName { return hashName("id-", s.canonical()) }

func (s identitySelector) matches(l *datapath.IdentityLabels) bool {
	if s.namespace != "" && s.namespace != l.Namespace {
		return false
	}
	return s.nsSel.matches(l.NamespaceLabels) && s.pod.matches(l.PodLabels)
}

// hashName derives a short set name from a set's definition: stable across runs and event
// orders, and short enough for any datapath's names.
func hashName(prefix, definition string) datapath.SetName {
	sum := sha256.Sum256([]byte(definition))
	return datapath.SetName(prefix + hex.EncodeToString(sum[:6]))
}
