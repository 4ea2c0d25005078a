package labctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/twill-net/twill/internal/lab/cluster"
	"github.com/twill-net/twill/internal/lab/kubenode"
)

// CoreDNSVersion is the CoreDNS module pinned in tools/coredns (a test keeps the two in step);
// CoreDNSImage is the image the lab packs its build into, fully qualified like the others.
const (
	CoreDNSVersion = "v1.15.0"
	CoreDNSImage   = "registry.twill.local/coredns:" + CoreDNSVersion
)

// The cluster DNS objects, named as kubeadm names them, so that tools which look for kube-dns
// (the connectivity test among them) find it.
const (
	dnsNamespace  = "kube-system"
	dnsService    = "kube-dns"
	dnsName       = "coredns"
	dnsAppLabel   = "k8s-app"
	clusterDomain = "cluster.local"
	dnsReplicas   = 2
	// In the node's network (see dnsPodSpec), away from the ports nodes use: the kubelet's
	// 10248-10250, kube-proxy's 10249 and 10256, the connectivity test's 19080-19182.
	dnsHealthPort  = 18080
	dnsReadyPort   = 18181
	dnsCheckedName = "kubernetes.default.svc." + clusterDomain
)

// Corefile is CoreDNS's configuration in the lab. NETWORK SAFETY: it has no forward (nor any
// other plugin that asks a resolver elsewhere): lab traffic never leaves the lab. The cluster's
// zones are answered from the API by the kubernetes plugin; any other name gets NXDOMAIN from
// the template plugin, at once, so a pod's lookups of outside names fail fast instead of
// timing out. The more specific server block wins for the cluster's zones.
const Corefile = `cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    errors
    health :18080
    ready :18181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        ttl 30
    }
    cache 30
    loadbalance
}
.:53 {
    errors
    template ANY ANY {
        rcode NXDOMAIN
    }
}
`

// BuildCoreDNSImage packs the CoreDNS program built from the pinned module (upstreamBin/coredns,
// static) as CoreDNSImage into an archive under dir. Its Corefile comes from a ConfigMap.
func BuildCoreDNSImage(dir, upstreamBin string) (kubenode.Image, error) {
	rootfs := filepath.Join(dir, "coredns-rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return kubenode.Image{}, err
	}
	src := filepath.Join(upstreamBin, "coredns")
	if !isStatic(src) {
		return kubenode.Image{}, fmt.Errorf("%s is missing or not a static program (hack/build-upstream.sh coredns)", src)
	}
	if err := linkOrCopy(src, filepath.Join(rootfs, "coredns")); err != nil {
		return kubenode.Image{}, fmt.Errorf("placing coredns in its image: %w", err)
	}
	return kubenode.WriteImage(filepath.Join(dir, "coredns.tar"), CoreDNSImage, rootfs, []string{"/coredns"})
}

// linkOrCopy hard-links src at dst (the program is large; the cache and the lab directory
// usually share a file system), copying it when they do not.
func linkOrCopy(src, dst string) error {
	_ = os.Remove(dst)
	if os.Link(src, dst) == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return err
	}
	return out.Close()
}

// dnsManifests are the objects of the cluster DNS, in the order they are created.
type dnsManifests struct {
	ServiceAccount *corev1.ServiceAccount
	ClusterRole    *rbacv1.ClusterRole
	Binding        *rbacv1.ClusterRoleBinding
	ConfigMap      *corev1.ConfigMap
	Deployment     *appsv1.Deployment
	Service        *corev1.Service
}

// dnsObjects describes CoreDNS running image behind the Service at clusterIP.
func dnsObjects(image, clusterIP string) dnsManifests {
	labels := map[string]string{dnsAppLabel: dnsService}
	meta := func(name string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: name, Namespace: dnsNamespace, Labels: labels}
	}
	clusterRoleName := "system:" + dnsName
	replicas := int32(dnsReplicas)
	noEscalation := false
	return dnsManifests{
		ServiceAccount: &corev1.ServiceAccount{ObjectMeta: meta(dnsName)},
		// What the kubernetes plugin watches: Services and EndpointSlices for the records,
		// Namespaces to answer for them, Pods for pod records.
		ClusterRole: &rbacv1.ClusterRole{
			ObjectMeta: metav1.ObjectMeta{Name: clusterRoleName, Labels: labels},
			Rules: []rbacv1.PolicyRule{
				{APIGroups: []string{""}, Resources: []string{"services", "namespaces", "pods"}, Verbs: []string{"list", "watch"}},
				{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
			},
		},
		Binding: &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: clusterRoleName, Labels: labels},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: clusterRoleName},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: dnsName, Namespace: dnsNamespace}},
		},
		ConfigMap: &corev1.ConfigMap{ObjectMeta: meta(dnsName), Data: map[string]string{"Corefile": Corefile}},
		Deployment: &appsv1.Deployment{
			ObjectMeta: meta(dnsName),
			Spec: appsv1.DeploymentSpec{
				Replicas: &replicas,
				Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec:       dnsPodSpec(image, labels, &noEscalation),
				},
			},
		},
		Service: &corev1.Service{
			ObjectMeta: meta(dnsService),
			Spec: corev1.ServiceSpec{
				Selector:  labels,
				ClusterIP: clusterIP,
				Ports: []corev1.ServicePort{
					{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53, TargetPort: intstr.FromInt32(53)},
					{Name: "dns-tcp", Protocol: corev1.ProtocolTCP, Port: 53, TargetPort: intstr.FromInt32(53)},
				},
			},
		},
	}
}

// dnsPodSpec runs CoreDNS in its node's network (hostNetwork). The reason is the lab's shape:
// the control-plane node has no kubelet and no agent, so no route back to pod addresses, and
// CoreDNS must reach the API (10.96.0.1, which kube-proxy turns into the control plane's
// address). From the node's network it does so with the node's address, which the control plane
// can answer. Pods still query the kube-dns Service, which kube-proxy sends to a node's port 53.
// Two replicas, one per node: the node's port 53 can be bound once.
func dnsPodSpec(image string, labels map[string]string, noEscalation *bool) corev1.PodSpec {
	return corev1.PodSpec{
		HostNetwork:        true,
		ServiceAccountName: dnsName,
		PriorityClassName:  "system-cluster-critical",
		// CoreDNS must not use itself as its resolver; it forwards nowhere anyway.
		DNSPolicy:   corev1.DNSDefault,
		Tolerations: []corev1.Toleration{{Key: "CriticalAddonsOnly", Operator: corev1.TolerationOpExists}},
		// Replicas on different nodes where there are several: one node going away leaves DNS up
		// (the host ports of the replicas keep them apart anyway).
		Affinity: &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
			PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{{
				Weight: 100,
				PodAffinityTerm: corev1.PodAffinityTerm{
					LabelSelector: &metav1.LabelSelector{MatchLabels: labels},
					TopologyKey:   corev1.LabelHostname,
				},
			}},
		}},
		Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{
			ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: dnsName}},
		}}},
		Containers: []corev1.Container{{
			Name:            dnsName,
			Image:           image,
			ImagePullPolicy: corev1.PullNever, // imported into every node; no registry exists
			Args:            []string{"-conf", "/etc/coredns/Corefile"},
			VolumeMounts:    []corev1.VolumeMount{{Name: "config", MountPath: "/etc/coredns", ReadOnly: true}},
			Ports: []corev1.ContainerPort{
				{Name: "dns", ContainerPort: 53, HostPort: 53, Protocol: corev1.ProtocolUDP},
				{Name: "dns-tcp", ContainerPort: 53, HostPort: 53, Protocol: corev1.ProtocolTCP},
				{Name: "health", ContainerPort: dnsHealthPort, HostPort: dnsHealthPort, Protocol: corev1.ProtocolTCP},
				{Name: "ready", ContainerPort: dnsReadyPort, HostPort: dnsReadyPort, Protocol: corev1.ProtocolTCP},
			},
			Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("50m"), corev1.ResourceMemory: resource.MustParse("32Mi")},
				Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("170Mi")},
			},
			LivenessProbe: &corev1.Probe{
				ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/health", Port: intstr.FromInt32(dnsHealthPort)}},
				PeriodSeconds:    10,
				TimeoutSeconds:   5,
				FailureThreshold: 5,
			},
			// The ready plugin answers once the kubernetes plugin has synced with the API.
			ReadinessProbe: &corev1.Probe{
				ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt32(dnsReadyPort)}},
				PeriodSeconds: 2,
			},
			SecurityContext: &corev1.SecurityContext{
				AllowPrivilegeEscalation: noEscalation,
				Capabilities: &corev1.Capabilities{
					Add:  []corev1.Capability{"NET_BIND_SERVICE"},
					Drop: []corev1.Capability{"ALL"},
				},
			},
		}},
	}
}

// createDNS creates the cluster DNS objects; ones already there are left as they are.
func createDNS(ctx context.Context, kube kubernetes.Interface, m dnsManifests) error {
	created := func(what string, err error) error {
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("cluster DNS: creating %s: %w", what, err)
		}
		return nil
	}
	core, ns := kube.CoreV1(), dnsNamespace
	_, err := core.ServiceAccounts(ns).Create(ctx, m.ServiceAccount, metav1.CreateOptions{})
	if err := created("ServiceAccount", err); err != nil {
		return err
	}
	_, err = kube.RbacV1().ClusterRoles().Create(ctx, m.ClusterRole, metav1.CreateOptions{})
	if err := created("ClusterRole", err); err != nil {
		return err
	}
	_, err = kube.RbacV1().ClusterRoleBindings().Create(ctx, m.Binding, metav1.CreateOptions{})
	if err := created("ClusterRoleBinding", err); err != nil {
		return err
	}
	_, err = core.ConfigMaps(ns).Create(ctx, m.ConfigMap, metav1.CreateOptions{})
	if err := created("ConfigMap", err); err != nil {
		return err
	}
	_, err = kube.AppsV1().Deployments(ns).Create(ctx, m.Deployment, metav1.CreateOptions{})
	if err := created("Deployment", err); err != nil {
		return err
	}
	_, err = core.Services(ns).Create(ctx, m.Service, metav1.CreateOptions{})
	return created("Service", err)
}

// dialFunc dials from somewhere inside the lab (a node's network namespace).
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// waitDNSAnswers waits until the DNS server at server (ip:53) answers for the kubernetes
// Service with its ClusterIP, asking through dial; the error says what it saw last.
func waitDNSAnswers(ctx context.Context, dial dialFunc, server, wantIP string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return dial(ctx, network, server)
	}}
	last := errors.New("no answer yet")
	for {
		attempt, cancelAttempt := context.WithTimeout(ctx, 3*time.Second)
		addrs, err := resolver.LookupHost(attempt, dnsCheckedName+".")
		cancelAttempt()
		switch {
		case err != nil:
			last = err
		case slices.Contains(addrs, wantIP):
			return nil
		default:
			last = fmt.Errorf("%s resolved to %v, want %s", dnsCheckedName, addrs, wantIP)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster DNS at %s does not answer after %s: %w", server, timeout, last)
		case <-time.After(time.Second):
		}
	}
}

// startClusterDNS deploys CoreDNS once the nodes are Ready and waits until it answers, asking
// from the first kubelet node (through kube-proxy's translation of the Service address, as a
// pod's query goes). It returns what the state file shows. A DNS that does not come up does not
// fail the lab (everything else works without it): it is reported, in the log and the state.
func startClusterDNS(ctx context.Context, c *cluster.Cluster, imageErr error, log *slog.Logger) string {
	if imageErr != nil {
		log.Warn("no cluster DNS: its image could not be built", "err", imageErr)
		return "not deployed: " + imageErr.Error()
	}
	nodes := c.Nodes()
	if len(nodes) == 0 {
		return "not deployed: no node"
	}
	log.Info("deploying the cluster DNS (CoreDNS)", "service", kubenode.ClusterDNS, "image", CoreDNSImage)
	if err := createDNS(ctx, c.Clients.Kube, dnsObjects(CoreDNSImage, kubenode.ClusterDNS)); err != nil {
		log.Warn("no cluster DNS", "err", err)
		return "not deployed: " + err.Error()
	}
	api, err := c.Clients.Kube.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		log.Warn("cluster DNS: reading the kubernetes Service", "err", err)
		return "not checked: " + err.Error()
	}
	server := net.JoinHostPort(kubenode.ClusterDNS, "53")
	if err := waitDNSAnswers(ctx, nodes[0].DialContext, server, api.Spec.ClusterIP, dnsWait); err != nil {
		log.Warn("the cluster DNS does not answer", "err", err)
		return "not answering: " + err.Error()
	}
	log.Info("cluster DNS answering", "service", kubenode.ClusterDNS)
	return "answering at " + kubenode.ClusterDNS
}

// dnsWait bounds the wait for CoreDNS: its pods start, sync with the API, and become ready.
const dnsWait = 3 * time.Minute
