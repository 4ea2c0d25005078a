package crds

import (
	"context"
	"testing"
	"time"

	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset/fake"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"

	"github.com/twill-net/twill/api/v1alpha1"
)

func TestCRDsMatchTheGoTypes(t *testing.T) {
	defs, err := CRDs()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		kind      string
		subStatus bool
	}{
		v1alpha1.IPPoolResource.Resource:    {"IPPool", false},
		v1alpha1.IPAMBlockResource.Resource: {"IPAMBlock", true},
	}
	if len(defs) != len(want) {
		t.Fatalf("%d CRDs, want %d", len(defs), len(want))
	}
	for _, crd := range defs {
		w, ok := want[crd.Spec.Names.Plural]
		if !ok {
			t.Errorf("unexpected CRD %s", crd.Name)
			continue
		}
		if crd.Name != crd.Spec.Names.Plural+"."+v1alpha1.GroupName || crd.Spec.Group != v1alpha1.GroupName {
			t.Errorf("CRD %s: group %s", crd.Name, crd.Spec.Group)
		}
		if crd.Spec.Names.Kind != w.kind || crd.Spec.Scope != apiextv1.ClusterScoped {
			t.Errorf("CRD %s: kind %s scope %s", crd.Name, crd.Spec.Names.Kind, crd.Spec.Scope)
		}
		if len(crd.Spec.Versions) != 1 || crd.Spec.Versions[0].Name != v1alpha1.SchemeGroupVersion.Version {
			t.Errorf("CRD %s: versions %+v", crd.Name, crd.Spec.Versions)
			continue
		}
		v := crd.Spec.Versions[0]
		if (v.Subresources != nil && v.Subresources.Status != nil) != w.subStatus {
			t.Errorf("CRD %s: status subresource %v, want %v", crd.Name, v.Subresources, w.subStatus)
		}
		if v.Schema == nil || v.Schema.OpenAPIV3Schema == nil || v.Schema.OpenAPIV3Schema.Properties["spec"].Properties["cidr"].Type != "string" {
			t.Errorf("CRD %s: no spec.cidr in the schema", crd.Name)
		}
	}
}

// Install creates the CRDs, updates them when they exist, and waits for Established.
func TestInstallCreatesUpdatesAndWaits(t *testing.T) {
	client := fake.NewSimpleClientset()
	// The fake has no controller to establish CRDs: play its part on every create and update.
	establish := func(action k8stesting.Action) (bool, runtime.Object, error) {
		obj := action.(interface{ GetObject() runtime.Object }).GetObject().(*apiextv1.CustomResourceDefinition)
		obj.Status.Conditions = []apiextv1.CustomResourceDefinitionCondition{{Type: apiextv1.Established, Status: apiextv1.ConditionTrue}}
		return false, nil, nil // let the tracker store the object as changed
	}
	client.PrependReactor("create", "customresourcedefinitions", establish)
	client.PrependReactor("update", "customresourcedefinitions", establish)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := Install(ctx, client); err != nil {
		t.Fatal(err)
	}
	crds := client.ApiextensionsV1().CustomResourceDefinitions()
	old, err := crds.Get(ctx, "ippools.twill.dev", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	old.Spec.Versions[0].AdditionalPrinterColumns = nil // an older definition
	if _, err := crds.Update(ctx, old, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := Install(ctx, client); err != nil {
		t.Fatalf("second install: %v", err)
	}
	got, err := crds.Get(ctx, "ippools.twill.dev", metav1.GetOptions{})
	if err != nil || len(got.Spec.Versions[0].AdditionalPrinterColumns) == 0 {
		t.Fatalf("install did not bring the definition up to date: %v", err)
	}
}
