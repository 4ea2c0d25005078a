package nftsvc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"sigs.k8s.io/knftables"

	"github.com/twill-net/twill/internal/datapath"
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
		viaNft: testutil.NewNetNS(t, "svcnft", hex.EncodeToString(s)),
		viaNL:  testutil.NewNetNS(t, "svcnl", hex.EncodeToString(s)),
	}
	must(t, k.viaNft.NS.Do(func(ns.NetNS) error {
		nft, err := knftables.New(TableFamily, TableName)
		k.nftRec = New(nft, nil)
		return err
	}))
	must(t, k.viaNL.NS.Do(func(ns.NetNS) error {
		var err error
		k.nlRec, err = NewKernel(nil)
		return err
	}))
	return k
}

func (k *twoKernels) apply(ch datapath.ServiceChanges) {
	k.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	must(k.t, k.viaNft.NS.Do(func(ns.NetNS) error { return k.nftRec.ApplyServices(ctx, ch) }))
	must(k.t, k.viaNL.NS.Do(func(ns.NetNS) error { return k.nlRec.ApplyServices(ctx, ch) }))
}

var (
	handles = regexp.MustCompile(` # handle \d+`)
	// The endpoint maps have a numgen result in their key: nft declares them with typeof, the
	// netlink writer with a type ending in mark (nft has no fixed-size integer type to name),
	// so nft prints the declaration and that field differently. The bytecode comparison sees
	// the keys' bytes.
	numgenKeyDecl = regexp.MustCompile(`(?m)^\s+(typeof .*numgen random mod \d+|type .* \. mark) : .*$`)
	markValue     = regexp.MustCompile(` \. 0x0*([0-9a-f]+) :`)
)

// list is the table as nft prints it from the kernel, and the same with the bytecode of
// every rule (nft --debug=netlink), without handles, which differ by the order of writing.
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
		return text
	}
	text = numgenKeyDecl.ReplaceAllString(text, "\t\t(endpoint map key)")
	return markValue.ReplaceAllString(text, " . $1 :")
}

func (k *twoKernels) same(when string) {
	k.t.Helper()
	for _, debug := range []bool{false, true} {
		a, b := list(k.t, k.viaNft, debug), list(k.t, k.viaNL, debug)
		if !debug {
			sameTable(k.t, b, a, when+": the table written over netlink lists differently from the one written by nft")
			continue
		}
		// Rule bytecode, one rule per paragraph, in chain order (nft prints rules in the order
		// of their handles, and elements of a set in no fixed order: sorted here).
		if got, want := sortedLines(b), sortedLines(a); !slices.Equal(got, want) {
			k.t.Errorf("%s: the kernel holds different expressions:\nnetlink:\n%s\nnft:\n%s", when, b, a)
		}
	}
}

func sortedLines(s string) []string {
	lines := regexp.MustCompile("\n+").Split(s, -1)
	slices.Sort(lines)
	return lines
}

// TestNetlinkMatchesNft writes every feature of the golden world, then updates that add,
// change and remove services, both ways, and compares what the kernel holds after each.
func TestNetlinkMatchesNft(t *testing.T) {
	k := newTwoKernels(t)
	golden := goldenServices()
	k.apply(datapath.ServiceChanges{Full: true, Set: golden})
	k.same("after a Full apply")

	// More elements than one netlink message carries (elementsPerMessage).
	k.apply(datapath.ServiceChanges{Set: manyServices(0, 600)})
	k.same("after adding services")

	changed := slices.Clone(golden[:2])
	changed[0].Ports = slices.Clone(changed[0].Ports)
	changed[0].Ports[0].Backends = changed[0].Ports[0].Backends[:1] // an endpoint goes
	changed[1].AffinityTimeout = time.Minute                        // a new affinity set
	k.apply(datapath.ServiceChanges{Set: changed, Removed: []datapath.ServiceKey{golden[3].Key}})
	k.same("after changing and removing services")

	if st := k.nlRec.Stats(); st.Rebuilds != 1 || st.Updates != 2 || st.Failures != 0 {
		t.Errorf("netlink stats %+v, want 1 rebuild and 2 updates", st)
	}
}
