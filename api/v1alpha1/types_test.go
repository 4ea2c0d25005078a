package v1alpha1

import (
	"net/netip"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
)

func TestBlockNameIsUniqueAndDNSSafe(t *testing.T) {
	cases := map[string]string{
		"10.244.0.64/26":      "10-244-0-64-26",
		"10.244.0.0/26":       "10-244-0-0-26",
		"fd00:10:244::40/122": "fd00-10-244--40-122",
		"fd00:10:244::/122":   "fd00-10-244---122",
		"::/122":              "0---122",
		"::1:0/112":           "0--1-0-112",
		"0:0:1::/48":          "0-0-1---48",
		"2001:db8::ff00/120":  "2001-db8--ff00-120",
	}
	seen := map[string]string{}
	for cidr, want := range cases {
		got := BlockName(netip.MustParsePrefix(cidr))
		if got != want {
			t.Errorf("BlockName(%s) = %q, want %q", cidr, got, want)
		}
		if errs := validation.IsDNS1123Subdomain(got); len(errs) > 0 {
			t.Errorf("BlockName(%s) = %q is not a valid object name: %v", cidr, got, errs)
		}
		if other, dup := seen[got]; dup {
			t.Errorf("%s and %s share the name %q", cidr, other, got)
		}
		seen[got] = cidr
	}
}

func TestSchemeKnowsTheTypes(t *testing.T) {
	s := runtime.NewScheme()
	if err := AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"IPPool", "IPPoolList", "IPAMBlock", "IPAMBlockList"} {
		if !s.Recognizes(SchemeGroupVersion.WithKind(kind)) {
			t.Errorf("scheme does not know %s", kind)
		}
	}
}

func TestDeepCopyIsIndependent(t *testing.T) {
	in := &IPAMBlockList{Items: []IPAMBlock{{
		ObjectMeta: metav1.ObjectMeta{Name: "b", Labels: map[string]string{"a": "1"}},
		Spec:       IPAMBlockSpec{CIDR: "10.0.0.0/26", Node: "n1"},
		Status:     IPAMBlockStatus{Allocated: 3},
	}}}
	out := in.DeepCopyObject().(*IPAMBlockList)
	out.Items[0].Labels["a"] = "2"
	out.Items[0].Spec.Node = "n2"
	out.Items[0].Status.Allocated = 4
	if in.Items[0].Labels["a"] != "1" || in.Items[0].Spec.Node != "n1" || in.Items[0].Status.Allocated != 3 {
		t.Fatalf("changing the copy changed the original: %+v", in.Items[0])
	}
	p := &IPPool{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{"x": "y"}}, Spec: IPPoolSpec{CIDR: "10.0.0.0/16"}}
	pc := p.DeepCopyObject().(*IPPool)
	pc.Annotations["x"] = "z"
	if p.Annotations["x"] != "y" {
		t.Fatal("pool copy shares its annotations with the original")
	}
}
