package service

import (
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/twill-net/twill/internal/datapath"
)

// TestFrontends checks, rule by rule, where a node answers for a Service (before backends).
func TestFrontends(t *testing.T) {
	httpPort := datapath.ServicePort{Name: "http", Protocol: datapath.ProtocolTCP, Port: 80}
	withNodePort := func(p datapath.ServicePort, np uint16) datapath.ServicePort { p.NodePort = np; return p }
	tests := []struct {
		name   string
		svc    func(s *corev1.Service)
		served bool
		want   datapath.Service // Key is filled in
	}{{
		name:   "ClusterIP",
		svc:    func(*corev1.Service) {},
		served: true,
		want:   datapath.Service{ClusterIPs: addrs("10.96.0.10"), Ports: []datapath.ServicePort{httpPort}},
	}, {
		name: "dual-stack keeps both cluster IPs, primary family first",
		svc: func(s *corev1.Service) {
			s.Spec.ClusterIP = "fd00:96::10"
			s.Spec.ClusterIPs = []string{"fd00:96::10", "10.96.0.10"}
		},
		served: true,
		want:   datapath.Service{ClusterIPs: addrs("fd00:96::10", "10.96.0.10"), Ports: []datapath.ServicePort{httpPort}},
	}, {
		name:   "an object with ClusterIP only (before dual-stack) still counts",
		svc:    func(s *corev1.Service) { s.Spec.ClusterIPs = nil },
		served: true,
		want:   datapath.Service{ClusterIPs: addrs("10.96.0.10"), Ports: []datapath.ServicePort{httpPort}},
	}, {
		name:   "headless is left out",
		svc:    func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "None", []string{"None"} },
		served: false,
	}, {
		name:   "no cluster IP yet is left out",
		svc:    func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "", nil },
		served: false,
	}, {
		name: "ExternalName is left out",
		svc: func(s *corev1.Service) {
			s.Spec.Type, s.Spec.ExternalName = corev1.ServiceTypeExternalName, "db.example.com"
			s.Spec.ClusterIP, s.Spec.ClusterIPs = "", nil
		},
		served: false,
	}, {
		name: "a service labelled for another proxy is left out",
		svc: func(s *corev1.Service) {
			s.Labels = map[string]string{"service.kubernetes.io/service-proxy-name": "other"}
		},
		served: false,
	}, {
		name: "NodePort serves its node ports",
		svc: func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 30080
		},
		served: true,
		want:   datapath.Service{ClusterIPs: addrs("10.96.0.10"), Ports: []datapath.ServicePort{withNodePort(httpPort, 30080)}},
	}, {
		name: "LoadBalancer: node ports, and ingress IPs as external IPs (Proxy mode and other families left out)",
		svc: func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Spec.Ports[0].NodePort = 30080
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{
				{IP: "203.0.113.7"},
				{IP: "203.0.113.8", IPMode: ptr(corev1.LoadBalancerIPModeVIP)},
				{IP: "203.0.113.9", IPMode: ptr(corev1.LoadBalancerIPModeProxy)},
				{Hostname: "lb.example.com"},
				{IP: "2001:db8::7"},
			}
		},
		served: true,
		want: datapath.Service{ClusterIPs: addrs("10.96.0.10"), ExternalIPs: addrs("203.0.113.7", "203.0.113.8"),
			Ports: []datapath.ServicePort{withNodePort(httpPort, 30080)}},
	}, {
		name:   "LoadBalancer without node ports (allocateLoadBalancerNodePorts false)",
		svc:    func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeLoadBalancer },
		served: true,
		want:   datapath.Service{ClusterIPs: addrs("10.96.0.10"), Ports: []datapath.ServicePort{httpPort}},
	}, {
		name:   "a node port left on a ClusterIP service is not served",
		svc:    func(s *corev1.Service) { s.Spec.Ports[0].NodePort = 30080 },
		served: true,
		want:   datapath.Service{ClusterIPs: addrs("10.96.0.10"), Ports: []datapath.ServicePort{httpPort}},
	}, {
		name: "spec.externalIPs, sorted, deduplicated with the ingress IPs",
		svc: func(s *corev1.Service) {
			s.Spec.ExternalIPs = []string{"198.51.100.9", "198.51.100.2", "bogus"}
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "198.51.100.9"}}
		},
		served: true,
		want: datapath.Service{ClusterIPs: addrs("10.96.0.10"), ExternalIPs: addrs("198.51.100.2", "198.51.100.9"),
			Ports: []datapath.ServicePort{httpPort}},
	}, {
		name: "externalTrafficPolicy Local",
		svc: func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 30080
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		},
		served: true,
		want: datapath.Service{ClusterIPs: addrs("10.96.0.10"), ExternalLocal: true,
			Ports: []datapath.ServicePort{withNodePort(httpPort, 30080)}},
	}, {
		name:   "externalTrafficPolicy Local means nothing on a service not reachable from outside",
		svc:    func(s *corev1.Service) { s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal },
		served: true,
		want:   datapath.Service{ClusterIPs: addrs("10.96.0.10"), Ports: []datapath.ServicePort{httpPort}},
	}, {
		name:   "internalTrafficPolicy Local",
		svc:    func(s *corev1.Service) { s.Spec.InternalTrafficPolicy = ptr(corev1.ServiceInternalTrafficPolicyLocal) },
		served: true,
		want:   datapath.Service{ClusterIPs: addrs("10.96.0.10"), InternalLocal: true, Ports: []datapath.ServicePort{httpPort}},
	}, {
		name:   "sessionAffinity ClientIP defaults to 10800s",
		svc:    func(s *corev1.Service) { s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP },
		served: true,
		want: datapath.Service{ClusterIPs: addrs("10.96.0.10"), AffinityTimeout: 3 * time.Hour,
			Ports: []datapath.ServicePort{httpPort}},
	}, {
		name: "sessionAffinity ClientIP with its timeout",
		svc: func(s *corev1.Service) {
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr[int32](60)}}
		},
		served: true,
		want: datapath.Service{ClusterIPs: addrs("10.96.0.10"), AffinityTimeout: time.Minute,
			Ports: []datapath.ServicePort{httpPort}},
	}, {
		name: "a timeout without ClientIP affinity is no affinity",
		svc: func(s *corev1.Service) {
			s.Spec.SessionAffinity = corev1.ServiceAffinityNone
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr[int32](60)}}
		},
		served: true,
		want:   datapath.Service{ClusterIPs: addrs("10.96.0.10"), Ports: []datapath.ServicePort{httpPort}},
	}, {
		name: "ports sorted by name; protocol empty is TCP; UDP and SCTP kept",
		svc: func(s *corev1.Service) {
			s.Spec.Ports = []corev1.ServicePort{
				{Name: "metrics", Port: 9090},
				{Name: "dns-udp", Protocol: corev1.ProtocolUDP, Port: 53},
				{Name: "assoc", Protocol: corev1.ProtocolSCTP, Port: 3868},
			}
		},
		served: true,
		want: datapath.Service{ClusterIPs: addrs("10.96.0.10"), Ports: []datapath.ServicePort{
			{Name: "assoc", Protocol: datapath.ProtocolSCTP, Port: 3868},
			{Name: "dns-udp", Protocol: datapath.ProtocolUDP, Port: 53},
			{Name: "metrics", Protocol: datapath.ProtocolTCP, Port: 9090},
		}},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := clusterIPService("web", []string{"10.96.0.10"},
				corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("web")})
			tt.svc(svc)
			got, ok := served(t, key("web"), svc)
			if ok != tt.served {
				t.Fatalf("served = %v, want %v (%+v)", ok, tt.served, got)
			}
			if !ok {
				return
			}
			tt.want.Key = key("web")
			for i := range tt.want.Ports { // no slice: every port rejects
				tt.want.Ports[i].Backends, tt.want.Ports[i].LocalBackends = nil, nil
			}
			if !equalServices(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestFrontendsOfEqualServicesAreEqual(t *testing.T) {
	a := clusterIPService("web", []string{"10.96.0.10"})
	a.Spec.ExternalIPs = []string{"198.51.100.2", "198.51.100.1"}
	b := a.DeepCopy()
	b.Spec.ExternalIPs = slices.Clone([]string{"198.51.100.1", "198.51.100.2"})
	sa, _ := frontendsOf(a)
	sb, _ := frontendsOf(b)
	if !equalServices(sa, sb) {
		t.Errorf("the same service with its external IPs listed in another order differs:\n%+v\n%+v", sa, sb)
	}
}
