package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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
//
// The bulk services ask for their ClusterIP (spec.clusterIP, as a user may), each a distinct
// address of the service range's dynamic part in a shuffled order. Left to choose, the
// apiserver (1.37) allocates one address at a time under one lock, an IPAddress write through
// its own loopback client included, so parallel clients gain nothing; a requested address
// takes that lock only to find its range. The proxies see the same objects either way. The
// single additions timed against each proxy leave the choice to the apiserver, as most users
// do.
//
// What remains is quadratic, and upstream's: every IPAddress the allocator writes is followed
// by two counts of all allocated addresses (ipallocator.(*Allocator).Used, for its metrics,
// a walk over the IPAddress cache with a label selector), 62% of the apiserver's CPU with
// 4,000 services in a profile here. Each service costs the apiserver time in proportion to
// the services already there: 185 s of CPU for services 1,001 to 10,000 in one run on this
// shared 2-core machine (~10 ms each at 1,000, ~30 ms at 10,000), so the 40,000 from 10,000
// to 50,000 take about half an hour of CPU.

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
	// pool are the addresses the bulk services ask for, in order (bulkClusterIPs); a bulk
	// service i asks for pool[i], and for none when the pool is exhausted or the address is
	// taken.
	pool []netip.Addr
}

// bulkIPSeed fixes the shuffle of the bulk services' addresses, so runs are alike.
const bulkIPSeed = 0x7477696c6c

// bulkClusterIPs are the addresses of cidr past its first 1024 (the static part the apiserver
// keeps for requested addresses is the first 256 of a /16; a margin beyond it leaves the
// cluster's own services, kubernetes at .1 and DNS at .10, far apart), but the last, in a
// fixed shuffled order: spread over the range as allocated ones would be.
func bulkClusterIPs(cidr netip.Prefix) []netip.Addr {
	if !cidr.Addr().Is4() || cidr.Bits() > 20 {
		return nil // a range too small to leave the first 1024 aside: the apiserver chooses
	}
	first := cidr.Masked().Addr().As4()
	base := uint32(first[0])<<24 | uint32(first[1])<<16 | uint32(first[2])<<8 | uint32(first[3])
	size := uint32(1) << (32 - cidr.Bits())
	var out []netip.Addr
	for off := uint32(1024); off < size-1; off++ {
		v := base + off
		out = append(out, netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}))
	}
	r := rand.New(rand.NewPCG(bulkIPSeed, bulkIPSeed))
	r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

func (w *serviceWorld) count() int { return len(w.ips) }

func bulkServiceName(i int) string { return fmt.Sprintf("bsvc-%05d", i) }

// growProgressEvery is how often grow says how far it got.
const growProgressEvery = 30 * time.Second

// grow creates the bulk services up to n, serviceWorkers at a time, saying every
// growProgressEvery how many exist and at what rate.
func (w *serviceWorld) grow(ctx context.Context, n int, say func(string, ...any)) error {
	from := len(w.ips)
	if n <= from {
		return nil
	}
	ips := make([]netip.Addr, n-from)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next, done atomic.Int64
	var wg sync.WaitGroup
	stopProgress := make(chan struct{})
	defer close(stopProgress)
	go func() {
		start, last, lastDone := time.Now(), time.Now(), int64(0)
		tick := time.NewTicker(growProgressEvery)
		defer tick.Stop()
		for {
			select {
			case <-stopProgress:
				return
			case now := <-tick.C:
				d := done.Load()
				say("%d of %d services created (%.0f/s over the last %s, %.0f/s since this step began)", from+int(d), n,
					float64(d-lastDone)/now.Sub(last).Seconds(), growProgressEvery, float64(d)/now.Sub(start).Seconds())
				last, lastDone = now, d
			}
		}
	}()
	for range serviceWorkers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(ips) || ctx.Err() != nil {
					return
				}
				var want netip.Addr
				if from+i < len(w.pool) {
					want = w.pool[from+i]
				}
				ip, err := w.create(ctx, bulkServiceName(from+i), want)
				if err != nil {
					cancel(err)
					return
				}
				ips[i] = ip
				done.Add(1)
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

// create writes the Service (asking for ClusterIP want, if valid), then its EndpointSlice (the
// order the EndpointSlice controller produces), and returns the ClusterIP the API allocated.
func (w *serviceWorld) create(ctx context.Context, name string, want netip.Addr) (netip.Addr, error) {
	ip, err := w.createServiceWithIP(ctx, name, want)
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
	return w.createServiceWithIP(ctx, name, netip.Addr{})
}

// createServiceWithIP is createService asking for the ClusterIP want (when valid); an address
// already taken (by a service the apiserver placed there) is left for the apiserver to choose.
func (w *serviceWorld) createServiceWithIP(ctx context.Context, name string, want netip.Addr) (netip.Addr, error) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: w.namespace},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP,
			Ports: []corev1.ServicePort{{Protocol: corev1.ProtocolTCP, Port: servicePort,
				TargetPort: intstr.FromInt32(w.port)}},
		},
	}
	if want.IsValid() {
		svc.Spec.ClusterIP = want.String()
	}
	obj, err := w.kube.CoreV1().Services(w.namespace).Create(ctx, svc, metav1.CreateOptions{})
	if want.IsValid() && apierrors.IsInvalid(err) && strings.Contains(err.Error(), "already allocated") {
		svc.Spec.ClusterIP = ""
		obj, err = w.kube.CoreV1().Services(w.namespace).Create(ctx, svc, metav1.CreateOptions{})
	}
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
