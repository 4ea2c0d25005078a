// Package snapshot reads every policy input from the Kubernetes API once (pods, namespaces,
// nodes, NetworkPolicies and, when their CRD is installed, ClusterNetworkPolicies) into a
// policy calculator, so that the CLI can explain and audit from the same compiled state the
// agents enforce, without running informers.
package snapshot

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"

	"github.com/twill-net/twill/internal/kube"
	"github.com/twill-net/twill/internal/policy"
)

// Load lists the inputs and returns a calculator holding them. Pods that have finished are
// left out, as the agents leave them out.
func Load(ctx context.Context, c *kube.Clients) (*policy.Calculator, error) {
	calc := policy.NewCalculator()
	core := c.Kube.CoreV1()
	nss, err := core.Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing namespaces: %w", err)
	}
	for i := range nss.Items {
		calc.UpsertNamespace(policy.NamespaceFromObject(&nss.Items[i]))
	}
	nodes, err := core.Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing nodes: %w", err)
	}
	for i := range nodes.Items {
		calc.UpsertNode(policy.NodeFromObject(&nodes.Items[i]))
	}
	pods, err := core.Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing pods: %w", err)
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Status.Phase == "Succeeded" || p.Status.Phase == "Failed" {
			continue
		}
		if e, ok := policy.EndpointFromPod(p); ok {
			calc.UpsertEndpoint(e)
		}
	}
	nps, err := c.Kube.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing NetworkPolicies: %w", err)
	}
	for i := range nps.Items {
		calc.UpsertNetworkPolicy(&nps.Items[i])
	}
	cnps, err := c.Dynamic.Resource(v1alpha2.SchemeGroupVersion.WithResource("clusternetworkpolicies")).List(ctx, metav1.ListOptions{})
	if apierrors.IsNotFound(err) {
		return calc, nil // the CRD is not installed
	}
	if err != nil {
		return nil, fmt.Errorf("listing ClusterNetworkPolicies: %w", err)
	}
	for _, u := range cnps.Items {
		var cnp v1alpha2.ClusterNetworkPolicy
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &cnp); err != nil {
			return nil, fmt.Errorf("reading ClusterNetworkPolicy %s: %w", u.GetName(), err)
		}
		calc.UpsertClusterNetworkPolicy(&cnp)
	}
	return calc, nil
}
