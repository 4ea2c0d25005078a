// Package rbac carries the identity and the rights of twill's agent (the YAML beside this file,
// embedded): the ServiceAccount twill-agent in kube-system, the ClusterRole twill-agent (exactly
// the API access the agent uses) and the ClusterRoleBinding between them. A real install applies
// the same YAML; the lab calls Install and runs every agent on a token of that account, so a
// permission missing from the role, or one too many, shows up in the lab first.
package rbac

import (
	"context"
	"embed"
	"fmt"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/yaml"
)

//go:embed *.yaml
var files embed.FS

// The names the YAML uses; Objects checks that it does.
const (
	// Namespace holds the agent's ServiceAccount (the agent's DaemonSet runs there).
	Namespace = "kube-system"
	// ServiceAccountName is the agent's ServiceAccount.
	ServiceAccountName = "twill-agent"
	// ClusterRoleName names both the ClusterRole and its ClusterRoleBinding.
	ClusterRoleName = "twill-agent"
)

// Username is how the API server names the agent's ServiceAccount in authorization.
const Username = "system:serviceaccount:" + Namespace + ":" + ServiceAccountName

// Agent is the agent's identity and rights, as objects.
type Agent struct {
	ServiceAccount *corev1.ServiceAccount
	ClusterRole    *rbacv1.ClusterRole
	Binding        *rbacv1.ClusterRoleBinding
}

// Objects decodes the embedded YAML and checks that its objects name each other.
func Objects() (Agent, error) {
	a := Agent{&corev1.ServiceAccount{}, &rbacv1.ClusterRole{}, &rbacv1.ClusterRoleBinding{}}
	for name, into := range map[string]any{
		"serviceaccount.yaml":     a.ServiceAccount,
		"clusterrole.yaml":        a.ClusterRole,
		"clusterrolebinding.yaml": a.Binding,
	} {
		data, err := files.ReadFile(name)
		if err != nil {
			return a, err
		}
		if err := yaml.UnmarshalStrict(data, into); err != nil {
			return a, fmt.Errorf("decoding %s: %w", name, err)
		}
	}
	sa, role, binding := a.ServiceAccount, a.ClusterRole, a.Binding
	if sa.Name != ServiceAccountName || sa.Namespace != Namespace || role.Name != ClusterRoleName || binding.Name != ClusterRoleName {
		return a, fmt.Errorf("agent RBAC YAML: names %s/%s, %s, %s; want %s/%s, %s, %s",
			sa.Namespace, sa.Name, role.Name, binding.Name, Namespace, ServiceAccountName, ClusterRoleName, ClusterRoleName)
	}
	wantSubject := rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: sa.Name, Namespace: sa.Namespace}
	if binding.RoleRef.Kind != "ClusterRole" || binding.RoleRef.Name != role.Name ||
		len(binding.Subjects) != 1 || binding.Subjects[0] != wantSubject {
		return a, fmt.Errorf("agent RBAC YAML: binding %s does not bind ClusterRole %s to %s/%s",
			binding.Name, role.Name, sa.Namespace, sa.Name)
	}
	return a, nil
}

// Install creates the agent's ServiceAccount, ClusterRole and ClusterRoleBinding, or brings
// existing ones to this version's definitions. The client needs the rights it grants (an admin).
func Install(ctx context.Context, client kubernetes.Interface) error {
	a, err := Objects()
	if err != nil {
		return err
	}
	sas := client.CoreV1().ServiceAccounts(Namespace)
	if _, err := sas.Create(ctx, a.ServiceAccount, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating ServiceAccount %s/%s: %w", Namespace, a.ServiceAccount.Name, err)
	}
	if err := applyClusterRole(ctx, client, a.ClusterRole); err != nil {
		return fmt.Errorf("installing ClusterRole %s: %w", a.ClusterRole.Name, err)
	}
	if err := applyBinding(ctx, client, a.Binding); err != nil {
		return fmt.Errorf("installing ClusterRoleBinding %s: %w", a.Binding.Name, err)
	}
	return nil
}

func applyClusterRole(ctx context.Context, client kubernetes.Interface, role *rbacv1.ClusterRole) error {
	roles := client.RbacV1().ClusterRoles()
	_, err := roles.Create(ctx, role, metav1.CreateOptions{})
	if !apierrors.IsAlreadyExists(err) {
		return err
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := roles.Get(ctx, role.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		next := cur.DeepCopy()
		next.Rules, next.Labels = role.Rules, role.Labels
		_, err = roles.Update(ctx, next, metav1.UpdateOptions{})
		return err
	})
}

// applyBinding creates the binding, or updates its subjects; a binding to another role is
// replaced, because the API server does not let roleRef change.
func applyBinding(ctx context.Context, client kubernetes.Interface, binding *rbacv1.ClusterRoleBinding) error {
	bindings := client.RbacV1().ClusterRoleBindings()
	_, err := bindings.Create(ctx, binding, metav1.CreateOptions{})
	if !apierrors.IsAlreadyExists(err) {
		return err
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := bindings.Get(ctx, binding.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cur.RoleRef != binding.RoleRef {
			uid := cur.UID
			if err := bindings.Delete(ctx, binding.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrors.IsNotFound(err) {
				return err
			}
			_, err := bindings.Create(ctx, binding, metav1.CreateOptions{})
			return err
		}
		next := cur.DeepCopy()
		next.Subjects, next.Labels = binding.Subjects, binding.Labels
		_, err = bindings.Update(ctx, next, metav1.UpdateOptions{})
		return err
	})
}

// Token asks the API server (TokenRequest) for a token of the agent's ServiceAccount, valid for
// validity, for an agent that runs outside a pod (the lab's agents): in a pod, the kubelet mounts
// a token of its own. The client needs to create serviceaccounts/token in kube-system.
func Token(ctx context.Context, client kubernetes.Interface, validity time.Duration) (string, error) {
	seconds := int64(validity / time.Second)
	req := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{ExpirationSeconds: &seconds}}
	resp, err := client.CoreV1().ServiceAccounts(Namespace).CreateToken(ctx, ServiceAccountName, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("requesting a token for ServiceAccount %s/%s: %w", Namespace, ServiceAccountName, err)
	}
	return resp.Status.Token, nil
}
