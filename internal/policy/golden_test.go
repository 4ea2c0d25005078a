package policy

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"

	"github.com/twill-net/twill/internal/datapath"
)

var update = flag.Bool("update", false, "rewrite golden files")

// goldenScenario is small but uses every kind of set and tier.
func goldenScenario() *Calculator {
	c := NewCalculator()
	c.UpsertNamespace(Namespace{Name: "shop", Labels: map[string]string{"env": "prod", "owner": "alice"}})
	c.UpsertNamespace(Namespace{Name: "tools", Labels: map[string]string{"env": "dev"}})
	c.UpsertNode(Node{Name: "n1", Labels: map[string]string{"role": "worker"}, IPs: addrs("172.31.0.1", "fd00:31::1")})
	c.UpsertEndpoint(Endpoint{Namespace: "shop", Name: "web-1", Labels: map[string]string{"app": "web", "hash": "1"},
		IPs: addrs("10.0.1.10", "fd00:1::10"), Node: "n1", Ports: []ContainerPort{{Name: "http", Protocol: datapath.ProtocolTCP, Port: 8080}}})
	c.UpsertEndpoint(Endpoint{Namespace: "shop", Name: "web-2", Labels: map[string]string{"app": "web", "hash": "2"},
		IPs: addrs("10.0.1.11"), Node: "n1", Ports: []ContainerPort{{Name: "http", Protocol: datapath.ProtocolTCP, Port: 8081}}})
	c.UpsertEndpoint(Endpoint{Namespace: "shop", Name: "db", Labels: map[string]string{"app": "db"}, IPs: addrs("10.0.1.20"), Node: "n1"})
	c.UpsertEndpoint(Endpoint{Namespace: "tools", Name: "client", Labels: map[string]string{"app": "client"}, IPs: addrs("10.0.2.10"), Node: "n1"})

	c.UpsertNetworkPolicy(netpol("shop", "web-from-clients", sel("app", "web"), func(s *networkingv1.NetworkPolicySpec) {
		s.Ingress = []networkingv1.NetworkPolicyIngressRule{{
			From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel("env", "dev"), PodSelector: sel("app", "client")}},
			Ports: []networkingv1.NetworkPolicyPort{npPort(corev1.ProtocolTCP, intstr.FromString("http"), 0)},
		}}
	}))
	c.UpsertNetworkPolicy(netpol("shop", "db-egress", sel("app", "db"), func(s *networkingv1.NetworkPolicySpec) {
		s.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
		s.Egress = []networkingv1.NetworkPolicyEgressRule{{
			To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8", Except: []string{"10.0.2.0/24"}}}},
			Ports: []networkingv1.NetworkPolicyPort{npPort(corev1.ProtocolTCP, intstr.FromInt32(5432), 5440),
				npPort(corev1.ProtocolSCTP, intstr.FromInt32(9), 0)},
		}}
	}))
	c.UpsertClusterNetworkPolicy(cnp("no-ssh-from-dev", v1alpha2.AdminTier, 10, subjectNamespaces(sel("env", "prod")),
		ingressRules(v1alpha2.ClusterNetworkPolicyIngressRule{Name: "ssh", Action: deny,
			From:      []v1alpha2.ClusterNetworkPolicyIngressPeer{{Namespaces: sel("env", "dev")}},
			Protocols: []v1alpha2.ClusterNetworkPolicyProtocol{{TCP: &v1alpha2.ClusterNetworkPolicyProtocolTCP{DestinationPort: &v1alpha2.Port{Number: 22}}}}})))
	c.UpsertClusterNetworkPolicy(cnp("prod-egress", v1alpha2.BaselineTier, 100, subjectNamespaces(sel("env", "prod")),
		egressRules(
			v1alpha2.ClusterNetworkPolicyEgressRule{Action: accept, To: []v1alpha2.ClusterNetworkPolicyEgressPeer{{Nodes: sel("role", "worker")}}},
			v1alpha2.ClusterNetworkPolicyEgressRule{Action: deny, To: []v1alpha2.ClusterNetworkPolicyEgressPeer{{Networks: []v1alpha2.CIDR{"0.0.0.0/0", "::/0"}}}})))
	return c
}

func TestGoldenState(t *testing.T) {
	s := goldenScenario().State()
	got := s.String()
	path := filepath.Join("testdata", "state.golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run TestGoldenState -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("state differs from %s (rerun with -update after checking the change):\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}
