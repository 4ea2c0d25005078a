package v1alpha1

import (
	"net/netip"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// IPPool is a range of pod addresses, cut into blocks that nodes claim. Cluster-scoped.
type IPPool struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec IPPoolSpec `json:"spec"`
}

// IPPoolSpec describes a pool.
type IPPoolSpec struct {
	// CIDR is the pool's range, IPv4 or IPv6, in network form (no host bits set).
	CIDR string `json:"cidr"`
	// BlockSize is the prefix length of the blocks nodes claim from the pool; 0 means the
	// default for the family (26 for IPv4, 122 for IPv6: 64 addresses either way).
	BlockSize int `json:"blockSize,omitempty"`
	// Disabled stops the pool from giving out new blocks and new addresses; blocks already
	// claimed keep the addresses they have until those are released.
	Disabled bool `json:"disabled,omitempty"`
}

// IPPoolList is a list of pools.
type IPPoolList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`

	Items []IPPool `json:"items"`
}

// IPAMBlock is one block of a pool, owned by one node. Its name is derived from its CIDR
// (BlockName), so two nodes claiming the same block race on a create and exactly one wins.
// Cluster-scoped.
type IPAMBlock struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   IPAMBlockSpec   `json:"spec"`
	Status IPAMBlockStatus `json:"status,omitempty"`
}

// IPAMBlockSpec says which range belongs to which node. It never changes after creation.
type IPAMBlockSpec struct {
	CIDR string `json:"cidr"`
	Pool string `json:"pool"`
	Node string `json:"node"`
}

// IPAMBlockStatus is what the owning node reports about its use of the block. The node's local
// records are the truth; this is a copy for people and for cluster-wide summaries.
type IPAMBlockStatus struct {
	Allocated int `json:"allocated"`
	Capacity  int `json:"capacity"`
}

// IPAMBlockList is a list of blocks.
type IPAMBlockList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`

	Items []IPAMBlock `json:"items"`
}

// BlockName is the object name of the block with this CIDR: the address and prefix length
// with every '.', ':' and '/' turned into '-', e.g. "10-244-0-64-26" or "fd00-10-244--40-122".
// The canonical (RFC 5952) IPv6 form is used so that each CIDR has exactly one name. An IPv6
// form starting with "::" gets a leading "0", because a DNS-1123 name must start with an
// alphanumeric character; no canonical form starts with "0::", so names stay unique.
func BlockName(cidr netip.Prefix) string {
	s := cidr.Masked().Addr().String()
	if strings.HasPrefix(s, ":") {
		s = "0" + s
	}
	s = strings.NewReplacer(".", "-", ":", "-").Replace(s)
	return s + "-" + strconv.Itoa(cidr.Bits())
}
