package nftdp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"sigs.k8s.io/knftables"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"

	"github.com/twill-net/twill/internal/datapath"
	"github.com/twill-net/twill/internal/policy"
	"github.com/twill-net/twill/internal/testutil"
)

// twoKernels writes the same applies into two namespaces, through nft (knftables) in one
// and over netlink (the agent's writer) in the other.
type twoKernels struct {
	t             *testing.T
	viaNft, viaNL *testutil.NetNS
	nftRec, nlRec *Reconciler
}

func newTwoKernels(t *testing.T) *twoKernels {
	testutil.RequireRoot(t)
	s := make([]byte, 3)
	_, _ = rand.Read(s)
	k := &twoKernels{t: t,
		viaNft: testutil.NewNetNS(t, "polnft", hex.EncodeToString(s)),
		viaNL:  testutil.NewNetNS(t, "polnl", hex.EncodeToString(s)),
	}
	if err := k.viaNft.NS.Do(func(ns.NetNS) error {
		nft, err := knftables.New(TableFamily, TableName)
		k.nftRec = New(nft, "n1", nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := k.viaNL.NS.Do(func(ns.NetNS) error {
		var err error
		k.nlRec, err = NewKernel("n1", nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return k
}

func (k *twoKernels) apply(s *datapath.PolicyState) {
	k.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, x := range []struct {
		n *testutil.NetNS
		r *Reconciler
	}{{k.viaNft, k.nftRec}, {k.viaNL, k.nlRec}} {
		if err := x.n.NS.Do(func(ns.NetNS) error { return x.r.ApplyPolicy(ctx, s) }); err != nil {
			k.t.Fatal(err)
		}
	}
}

var (
	handles = regexp.MustCompile(` # handle \d+`)
	// In the bytecode listing, a rule's first line ends with its handle and the handle of
	// the rule before it, which differ with the order of writing.
	ruleHandles = regexp.MustCompile(`(?m)^(inet twill \S+)( \d+)+$`)
	// nft marks an interval that runs to the largest address as open in the element's user
	// data; google/nftables can write no element user data but a comment. The kernel holds
	// the same interval either way, and nft lists it the same.
	openInterval = regexp.MustCompile(`  userdata = \{ \\x01\\x04\\x01\\x00\\x00\\x00 \}`)
	elementList  = regexp.MustCompile(`elements = \{[^}]*\}`)
)

// list is the table as nft prints it from the kernel, or the bytecode of every rule and the
// elements of every set (nft --debug=netlink).
func list(t *testing.T, n *testutil.NetNS, debug bool) string {
	t.Helper()
	args := []string{"netns", "exec", n.Name, "nft"}
	if debug {
		args = append(args, "--debug=netlink")
	}
	out, err := exec.Command("ip", append(args, "list", "table", "inet", TableName)...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft list: %v\n%s", err, out)
	}
	text := handles.ReplaceAllString(string(out), "")
	if debug {
		// Only the bytecode; the table nft prints after it is compared without debug.
		text, _, _ = strings.Cut(text, "\ntable inet")
		text = ruleHandles.ReplaceAllString(text, "$1")
		text = openInterval.ReplaceAllString(text, "")
		return text
	}
	// nft orders the elements of an interval concatenation its own way before sending them,
	// and the kernel lists them in the order they came: elements are compared as sets.
	return elementList.ReplaceAllStringFunc(text, func(list string) string {
		inner := strings.TrimSuffix(strings.TrimPrefix(list, "elements = {"), "}")
		elems := strings.Split(inner, ",")
		for i := range elems {
			elems[i] = strings.TrimSpace(elems[i])
		}
		slices.Sort(elems)
		return "elements = { " + strings.Join(elems, ", ") + " }"
	})
}

func (k *twoKernels) same(when string) {
	k.t.Helper()
	for _, debug := range []bool{false, true} {
		a, b := list(k.t, k.viaNft, debug), list(k.t, k.viaNL, debug)
		if !debug {
			if a != b {
				k.t.Errorf("%s: the table written over netlink lists differently from the one written by nft:\n%s",
					when, lineDiff(b, a))
			}
			continue
		}
		// Rule bytecode and set elements, compared as sorted lines: nft prints elements in
		// no fixed order.
		if got, want := sortedLines(b), sortedLines(a); !slices.Equal(got, want) {
			k.t.Errorf("%s: the kernel holds different expressions or elements:\n%s", when,
				lineDiff(strings.Join(got, "\n"), strings.Join(want, "\n")))
		}
	}
}

func sortedLines(s string) []string {
	lines := regexp.MustCompile("\n+").Split(s, -1)
	slices.Sort(lines)
	return lines
}

// TestNetlinkMatchesNft writes the kernel world (every kind of rule, set and map), then
// updates that add, change and remove pods and policies, both ways, and compares what the
// kernel holds after each: its listing, and the bytecode of every rule with every element.
func TestNetlinkMatchesNft(t *testing.T) {
	k := newTwoKernels(t)
	c := kernelWorld()
	k.apply(state(c))
	k.same("after the first apply")

	// Golden state too: admin and baseline rules with ports, egress named ports.
	k.apply(goldenState())
	k.same("after an update to the golden state")

	// Many pods: more elements than one netlink message carries.
	c = kernelWorld()
	for i := range 700 {
		upsert(c, policy.Endpoint{Namespace: "dev", Name: "many" + itoa(i), Labels: labels("app", "client"), Node: []string{"n1", "n2"}[i%2],
			IPs: addrs("10.8." + itoa(i/200) + "." + itoa(1+i%200))})
	}
	k.apply(state(c))
	k.same("after adding many pods")

	// A pod relabelled, a pod and a policy removed, an admin policy with port ranges added.
	upsert(c, policy.Endpoint{Namespace: "dev", Name: "many3", Labels: labels("app", "db"), Node: "n2", IPs: addrs("10.8.0.4")})
	c.DeleteEndpoint("dev", "many4")
	c.DeleteNetworkPolicy("prod", "deny-ingress")
	upsert(c, cnp("ranges", v1alpha2.AdminTier, 40, v1alpha2.ClusterNetworkPolicySubject{Namespaces: sel("env", "prod")},
		func(s *v1alpha2.ClusterNetworkPolicySpec) {
			s.Ingress = []v1alpha2.ClusterNetworkPolicyIngressRule{{Action: v1alpha2.ClusterNetworkPolicyRuleActionDeny,
				From: []v1alpha2.ClusterNetworkPolicyIngressPeer{{Namespaces: sel()}},
				Protocols: []v1alpha2.ClusterNetworkPolicyProtocol{tcpPort(23),
					{TCP: &v1alpha2.ClusterNetworkPolicyProtocolTCP{DestinationPort: &v1alpha2.Port{Range: &v1alpha2.PortRange{Start: 6000, End: 6010}}}}}}}
		}))
	k.apply(state(c))
	k.same("after changing and removing pods and policies")

	// Back to fewer pods: elements of every kind deleted.
	c = kernelWorld()
	k.apply(state(c))
	k.same("after removing many pods")

	if st := k.nlRec.Stats(); st.Rebuilds != 1 || st.Failures != 0 {
		t.Errorf("netlink stats %+v, want 1 rebuild and only updates after", st)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
