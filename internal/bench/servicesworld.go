package bench

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// The services suite's API objects: selectorless Services of one TCP port, each with one
// EndpointSlice (named after it, labelled with its name as the EndpointSlice controller
// labels its own) listing the two server pods as ready endpoints.

const (
	// servicePort is every service's port; the endpoints answer on rrPort.
	servicePort = 80
	// serviceWorkers are the parallel API clients that create the services.
	serviceWorkers = 24
)

// serviceWorld is the set of benchmark services in the lab.
type serviceWorld struct {
	kube      kubernetes.Interface
	namespace string
	endpoints []string
	port      int32

	// ips are the ClusterIPs of the bulk services, in the order of their names.
	ips []netip.Addr
}

func (w *serviceWorld) count() int { return len(w.ips) }

func bulkServiceName(i int) string { return fmt.Sprintf("bsvc-%05d", i) }

// grow creates the bulk services up to n, serviceWorkers at a time.
func (w *serviceWorld) grow(ctx context.Context, n int) error {
	from := len(w.ips)
	if n <= from {
		return nil
	}
	ips := make([]netip.Addr, n-from)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range serviceWorkers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(ips) || ctx.Err() != nil {
					return
				}
				ip, err := w.create(ctx, bulkServiceName(from+i))
				if err != nil {
					cancel(err)
					return
				}
				ips[i] = ip
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return err
	}
	w.ips = append(w.ips, ips...)
	return nil
}

// create writes the Service, then its EndpointSlice (the order the EndpointSlice controller
// produces), and returns the ClusterIP the API allocated.
func (w *serviceWorld) create(ctx context.Context, name string) (netip.Addr, error) {
	ip, err := w.createService(ctx, name)
	if err != nil {
		return ip, err
	}
	return ip, w.createSlice(ctx, name)
}

// createSlice writes the service's EndpointSlice (one that exists already, from a retried
// request that did land, is fine).
func (w *serviceWorld) createSlice(ctx context.Context, name string) error {
	if _, err := w.kube.DiscoveryV1().EndpointSlices(w.namespace).Create(ctx, w.slice(name), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating the EndpointSlice of %s: %w", name, err)
	}
	return nil
}

// createService writes the Service and returns the ClusterIP the API allocated. A service
// that exists already is read back.
func (w *serviceWorld) createService(ctx context.Context, name string) (netip.Addr, error) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: w.namespace},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP,
			Ports: []corev1.ServicePort{{Protocol: corev1.ProtocolTCP, Port: servicePort,
				TargetPort: intstr.FromInt32(w.port)}},
		},
	}
	obj, err := w.kube.CoreV1().Services(w.namespace).Create(ctx, svc, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		obj, err = w.kube.CoreV1().Services(w.namespace).Get(ctx, name, metav1.GetOptions{})
	}
	if err != nil {
		return netip.Addr{}, fmt.Errorf("creating service %s: %w", name, err)
	}
	ip, err := netip.ParseAddr(obj.Spec.ClusterIP)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("service %s has no ClusterIP: %w", name, err)
	}
	return ip, nil
}

func (w *serviceWorld) slice(service string) *discoveryv1.EndpointSlice {
	ready := true
	proto := corev1.ProtocolTCP
	portName := ""
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: service, Namespace: w.namespace,
			Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &portName, Protocol: &proto, Port: &w.port}},
	}
	for _, ep := range w.endpoints {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{ep},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
	}
	return s
}

// remove deletes a service and its slice.
func (w *serviceWorld) remove(ctx context.Context, name string) error {
	err := w.kube.CoreV1().Services(w.namespace).Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting service %s: %w", name, err)
	}
	err = w.kube.DiscoveryV1().EndpointSlices(w.namespace).Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting the EndpointSlice of %s: %w", name, err)
	}
	return nil
}

// samples are the bulk services whose answering says a full sync is done: the first, the
// last and six spread between.
func (w *serviceWorld) samples() []netip.AddrPort {
	n := len(w.ips)
	var out []netip.AddrPort
	seen := map[int]bool{}
	for k := range 8 {
		i := k * (n - 1) / 7
		if seen[i] {
			continue
		}
		seen[i] = true
		out = append(out, netip.AddrPortFrom(w.ips[i], servicePort))
	}
	return out
}
