// Package crds carries twill's CustomResourceDefinitions (the YAML beside this file, embedded)
// and installs them into a cluster: the agent and the lab call Install before they use IPPools
// and IPAMBlocks, and tests call it against their own API server.
package crds

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"time"

	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiext "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/yaml"
)

//go:embed *.yaml
var files embed.FS

// establishTimeout bounds the wait for the API server to serve a new CRD; it takes well under
// a second on a healthy server.
const establishTimeout = time.Minute

// CRDs returns the definitions, decoded, in a stable order.
func CRDs() ([]*apiextv1.CustomResourceDefinition, error) {
	names, err := fs.Glob(files, "*.yaml")
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	out := make([]*apiextv1.CustomResourceDefinition, 0, len(names))
	for _, name := range names {
		data, err := files.ReadFile(name)
		if err != nil {
			return nil, err
		}
		crd := &apiextv1.CustomResourceDefinition{}
		if err := yaml.UnmarshalStrict(data, crd); err != nil {
			return nil, fmt.Errorf("decoding %s: %w", name, err)
		}
		out = append(out, crd)
	}
	return out, nil
}

// Install creates twill's CRDs, or updates them to this version's definitions, and waits until
// the API server serves them (condition Established).
func Install(ctx context.Context, client apiext.Interface) error {
	defs, err := CRDs()
	if err != nil {
		return err
	}
	for _, crd := range defs {
		if err := apply(ctx, client, crd); err != nil {
			return fmt.Errorf("installing CRD %s: %w", crd.Name, err)
		}
	}
	for _, crd := range defs {
		if err := waitEstablished(ctx, client, crd.Name); err != nil {
			return fmt.Errorf("waiting for CRD %s: %w", crd.Name, err)
		}
	}
	return nil
}

func apply(ctx context.Context, client apiext.Interface, crd *apiextv1.CustomResourceDefinition) error {
	crds := client.ApiextensionsV1().CustomResourceDefinitions()
	_, err := crds.Create(ctx, crd, metav1.CreateOptions{})
	if !apierrors.IsAlreadyExists(err) {
		return err
	}
	// Another installer (an agent on another node) may update it at the same time: read, replace
	// the spec, write, and start over on a conflict.
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := crds.Get(ctx, crd.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		next := cur.DeepCopy()
		next.Spec = crd.Spec
		next.Labels, next.Annotations = crd.Labels, crd.Annotations
		_, err = crds.Update(ctx, next, metav1.UpdateOptions{})
		return err
	})
}

func waitEstablished(ctx context.Context, client apiext.Interface, name string) error {
	return wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, establishTimeout, true, func(ctx context.Context) (bool, error) {
		crd, err := client.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range crd.Status.Conditions {
			switch {
			case c.Type == apiextv1.NamesAccepted && c.Status == apiextv1.ConditionFalse:
				return false, fmt.Errorf("names not accepted: %s", c.Message)
			case c.Type == apiextv1.Established && c.Status == apiextv1.ConditionTrue:
				return true, nil
			}
		}
		return false, nil
	})
}
