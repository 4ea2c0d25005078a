// Package v1alpha1 holds the Go types of twill's own Kubernetes resources (API group twill.dev):
// IPPool, the address ranges an administrator gives the cluster, and IPAMBlock, one slice of a
// pool claimed by one node. The CRDs that serve them are in deploy/crds; internal/ipam/kubestore
// reads and writes them through the dynamic client.
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupName is twill's API group.
const GroupName = "twill.dev"

// SchemeGroupVersion is the group and version of every type in this package.
var SchemeGroupVersion = schema.GroupVersion{Group: GroupName, Version: "v1alpha1"}

// GroupVersion is SchemeGroupVersion under the name controller-runtime style code expects.
var GroupVersion = SchemeGroupVersion

// The resources, as the dynamic client addresses them.
var (
	IPPoolResource    = SchemeGroupVersion.WithResource("ippools")
	IPAMBlockResource = SchemeGroupVersion.WithResource("ipamblocks")
)

var (
	// SchemeBuilder registers this package's types with a runtime.Scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)
	// AddToScheme adds IPPool, IPAMBlock and their lists to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(SchemeGroupVersion, &IPPool{}, &IPPoolList{}, &IPAMBlock{}, &IPAMBlockList{})
	metav1.AddToGroupVersion(s, SchemeGroupVersion)
	return nil
}
