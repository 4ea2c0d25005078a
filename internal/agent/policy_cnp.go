package agent

import (
	"context"
	"sync"

	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextinformers "k8s.io/apiextensions-apiserver/pkg/client/informers/externalversions"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// cnpCRDName is the CRD that serves ClusterNetworkPolicies.
const cnpCRDName = "clusternetworkpolicies." + v1alpha2.GroupName

var cnpResource = v1alpha2.SchemeGroupVersion.WithResource("clusternetworkpolicies")

// watchClusterNetworkPolicies feeds ClusterNetworkPolicies to the calculator once their CRD
// is served. The CRD is optional (it belongs to sigs.k8s.io/network-policy-api, not to twill):
// while it is absent the agent enforces NetworkPolicies alone and says so once. The agent
// watches that one CRD, so that installing it later takes effect at once, without a restart.
func (p *policyEnforcer) watchClusterNetworkPolicies(ctx context.Context) {
	served := make(chan struct{})
	var once sync.Once
	onCRD := func(o any) {
		crd, ok := o.(*apiextv1.CustomResourceDefinition)
		if !ok {
			return
		}
		for _, c := range crd.Status.Conditions {
			if c.Type == apiextv1.Established && c.Status == apiextv1.ConditionTrue {
				once.Do(func() { close(served) })
			}
		}
	}
	crdFactory := apiextinformers.NewSharedInformerFactoryWithOptions(p.clients.APIExt, 0,
		apiextinformers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", cnpCRDName).String()
		}))
	crdInf := crdFactory.Apiextensions().V1().CustomResourceDefinitions().Informer()
	if _, err := crdInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: onCRD, UpdateFunc: func(_, o any) { onCRD(o) },
	}); err != nil {
		p.log.Error("watching the ClusterNetworkPolicy CRD", "err", err)
		return
	}
	crdFactory.Start(ctx.Done())
	defer crdFactory.Shutdown()
	if cache.WaitForCacheSync(ctx.Done(), crdInf.HasSynced) {
		select {
		case <-served:
		default:
			p.log.Info("ClusterNetworkPolicy CRD is not installed: enforcing NetworkPolicies only until it is",
				"crd", cnpCRDName)
			p.cnpSynced.Store(true)
		}
	}
	select {
	case <-ctx.Done():
		return
	case <-served:
	}
	factory := dynamicinformer.NewDynamicSharedInformerFactory(p.clients.Dynamic, 0)
	inf := factory.ForResource(cnpResource).Informer()
	upsert := func(o any) {
		if cnp, ok := toCNP(o); ok {
			p.calc.UpsertClusterNetworkPolicy(cnp)
		}
	}
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { upsert(o); p.kick() },
		UpdateFunc: func(_, o any) { upsert(o); p.kick() },
		DeleteFunc: func(o any) {
			if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = t.Obj
			}
			if u, ok := o.(*unstructured.Unstructured); ok {
				p.calc.DeleteClusterNetworkPolicy(u.GetName())
				p.kick()
			}
		},
	})
	if err != nil {
		p.log.Error("watching ClusterNetworkPolicies", "err", err)
		return
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		p.log.Info("enforcing ClusterNetworkPolicies")
		p.cnpSynced.Store(true)
		p.kick()
	}
	<-ctx.Done()
}

func toCNP(o any) (*v1alpha2.ClusterNetworkPolicy, bool) {
	u, ok := o.(*unstructured.Unstructured)
	if !ok {
		return nil, false
	}
	var cnp v1alpha2.ClusterNetworkPolicy
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &cnp); err != nil {
		return nil, false
	}
	return &cnp, true
}
