package rbac

import (
	"slices"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
)

func TestObjectsDecodeAndNameEachOther(t *testing.T) {
	a, err := Objects()
	if err != nil {
		t.Fatal(err)
	}
	if a.ServiceAccount.Namespace != Namespace || a.Binding.RoleRef.Name != a.ClusterRole.Name {
		t.Errorf("objects do not fit together: %+v", a)
	}
	if len(a.ClusterRole.Rules) == 0 {
		t.Fatal("the ClusterRole has no rules")
	}
}

// The role stays narrow whatever is added to it later: no wildcards, nothing on secrets or
// other credentials, and no write on objects other components own.
func TestClusterRoleGrantsNothingBroad(t *testing.T) {
	a, err := Objects()
	if err != nil {
		t.Fatal(err)
	}
	readOnly := map[string]bool{"get": true, "list": true, "watch": true}
	never := []string{"secrets", "configmaps", "serviceaccounts", "serviceaccounts/token", "clusterroles",
		"clusterrolebindings", "roles", "rolebindings", "tokenreviews", "certificatesigningrequests"}
	for _, r := range a.ClusterRole.Rules {
		for _, field := range [][]string{r.APIGroups, r.Resources, r.Verbs, r.ResourceNames} {
			if slices.Contains(field, rbacv1.ResourceAll) {
				t.Errorf("rule %+v has a wildcard", r)
			}
		}
		if len(r.NonResourceURLs) > 0 {
			t.Errorf("rule %+v grants non-resource URLs", r)
		}
		for _, res := range r.Resources {
			if slices.Contains(never, res) {
				t.Errorf("rule %+v grants access to %s", r, res)
			}
			if !slices.Contains(r.APIGroups, "twill.dev") {
				for _, v := range r.Verbs {
					if !readOnly[v] {
						t.Errorf("rule %+v writes (%s) %s, which twill does not own", r, v, res)
					}
				}
			}
		}
	}
}
