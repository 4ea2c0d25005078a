package agent

import (
	"testing"

	"github.com/twill-net/twill/internal/cniserver"
	"github.com/twill-net/twill/internal/ipam"
)

// The fast path attaches to pods' host veths by name: the name cniserver gives them, and no
// other.
func TestIsPodVeth(t *testing.T) {
	name := cniserver.HostVethName(ipam.Handle{ContainerID: "abc", IfName: "eth0"})
	if !isPodVeth(name) {
		t.Errorf("%s, a pod's host veth, is not recognised", name)
	}
	for _, other := range []string{"twill.vxlan", "eth0", "tw", "twXYZ0123456a", name + "0", "veth1234567890"} {
		if isPodVeth(other) {
			t.Errorf("%s is taken for a pod's host veth", other)
		}
	}
}

func TestDatapathOption(t *testing.T) {
	cfg := DefaultConfig()
	cfg.NodeName = "n1"
	for _, ok := range []string{DatapathAuto, DatapathEBPF, DatapathNFTables} {
		cfg.Datapath = ok
		if err := cfg.validate(); err != nil {
			t.Errorf("--datapath %s: %v", ok, err)
		}
	}
	cfg.Datapath = "xdp"
	if err := cfg.validate(); err == nil {
		t.Error("--datapath xdp is accepted")
	}
}
