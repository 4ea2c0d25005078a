package policy

import (
	"net/netip"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/twill-net/twill/internal/datapath"
)

func TestEndpointFromPod(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "web", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{NodeName: "n1",
			InitContainers: []corev1.Container{{Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9090}}}},
			Containers: []corev1.Container{{Ports: []corev1.ContainerPort{
				{Name: "http", ContainerPort: 8080},
				{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
				{ContainerPort: 7000}, // unnamed: no policy can name it
			}}}},
		Status: corev1.PodStatus{PodIPs: []corev1.PodIP{{IP: "10.0.0.5"}, {IP: "fd00::5"}}},
	}
	got, ok := EndpointFromPod(pod)
	want := Endpoint{Namespace: "x", Name: "web", Labels: map[string]string{"app": "web"}, Node: "n1",
		IPs:   []netip.Addr{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("fd00::5")},
		Ports: []ContainerPort{{"metrics", datapath.ProtocolTCP, 9090}, {"http", datapath.ProtocolTCP, 8080}, {"dns", datapath.ProtocolUDP, 53}}}
	if !ok || !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, %v\nwant %+v", got, ok, want)
	}
	pod.Spec.HostNetwork = true
	if _, ok := EndpointFromPod(pod); ok {
		t.Error("a host-network pod became an endpoint")
	}
}

func TestNodeFromObject(t *testing.T) {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: "172.31.0.1"}, {Type: corev1.NodeHostName, Address: "n1"},
		{Type: corev1.NodeInternalIP, Address: "fd00:31::1"},
	}}}
	got := NodeFromObject(n)
	if want := []netip.Addr{netip.MustParseAddr("172.31.0.1"), netip.MustParseAddr("fd00:31::1")}; !reflect.DeepEqual(got.IPs, want) {
		t.Errorf("IPs = %v, want %v", got.IPs, want)
	}
}

func TestExplainTargets(t *testing.T) {
	c := newWorld()
	if _, err := ParseTarget("x/"); err == nil {
		t.Error("ParseTarget accepted x/")
	}
	if _, err := ParseTarget("not-an-ip"); err == nil {
		t.Error("ParseTarget accepted not-an-ip")
	}
	if _, err := c.Explain(Target{Pod: datapath.PodRef{Namespace: "x", Name: "nope"}}, Target{Addr: netip.MustParseAddr(external)}, 80, datapath.ProtocolTCP); err == nil {
		t.Error("explain of an unknown pod succeeded")
	}
	if _, err := c.Explain(Target{Pod: datapath.PodRef{Namespace: "x", Name: "a"}}, Target{Addr: netip.MustParseAddr("2001:db8::1")}, 80, datapath.ProtocolTCP); err == nil {
		t.Error("explain across families succeeded")
	}
	ex, err := c.Explain(Target{Pod: datapath.PodRef{Namespace: "x", Name: "a"}}, Target{Pod: datapath.PodRef{Namespace: "y", Name: "b"}}, 80, datapath.ProtocolTCP)
	if err != nil || !ex.Allowed || ex.Packet.Src != netip.MustParseAddr("10.0.1.1") || ex.Packet.Dst != netip.MustParseAddr("10.0.2.2") {
		t.Errorf("explain x/a -> y/b = %+v, %v", ex, err)
	}
}
