package controlplane

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"path/filepath"
	"strconv"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// The controllers' secure ports (their upstream defaults), on the control-plane node's loopback.
const (
	controllerManagerPort = 10257
	schedulerPort         = 10259
)

// startControllers starts kube-controller-manager and kube-scheduler, each with its own client
// certificate identity (the users the upstream RBAC bootstrap policy grants their rights to), and
// waits until both report healthy.
func (cp *ControlPlane) startControllers(ctx context.Context) error {
	cmKubeconfig := cp.path("pki", "controller-manager.kubeconfig")
	if err := cp.WriteKubeconfigFor(cmKubeconfig, "system:kube-controller-manager"); err != nil {
		return err
	}
	schedKubeconfig := cp.path("pki", "scheduler.kubeconfig")
	if err := cp.WriteKubeconfigFor(schedKubeconfig, "system:kube-scheduler"); err != nil {
		return err
	}
	var err error
	cp.controllerManager, err = startProcess(cp.cfg.Node, "kube-controller-manager",
		filepath.Join(cp.cfg.BinDir, "kube-controller-manager"), cp.path("logs", "kube-controller-manager.log"), []string{
			"--kubeconfig=" + cmKubeconfig,
			"--authentication-kubeconfig=" + cmKubeconfig,
			"--authorization-kubeconfig=" + cmKubeconfig,
			"--bind-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(controllerManagerPort),
			"--leader-elect=false",
			// Each controller gets its own service account, as in a kubeadm cluster, so RBAC
			// sees which controller does what.
			"--use-service-account-credentials=true",
			"--service-account-private-key-file=" + cp.path("pki", "sa.key"),
			"--root-ca-file=" + cp.path("pki", "ca.crt"),
			"--cluster-signing-cert-file=" + cp.path("pki", "ca.crt"),
			"--cluster-signing-key-file=" + cp.path("pki", "ca.key"),
			"--service-cluster-ip-range=" + cp.cfg.ServiceCIDR,
			// Pod addresses are twill's business (its IPAM), not the node IPAM controller's.
			"--allocate-node-cidrs=false",
			"--profiling=false",
		})
	if err != nil {
		return err
	}
	cp.scheduler, err = startProcess(cp.cfg.Node, "kube-scheduler",
		filepath.Join(cp.cfg.BinDir, "kube-scheduler"), cp.path("logs", "kube-scheduler.log"), []string{
			"--kubeconfig=" + schedKubeconfig,
			"--authentication-kubeconfig=" + schedKubeconfig,
			"--authorization-kubeconfig=" + schedKubeconfig,
			"--bind-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(schedulerPort),
			"--leader-elect=false",
			"--profiling=false",
		})
	if err != nil {
		return err
	}
	if err := waitReady(ctx, cp.scheduler, cp.localHealthy(schedulerPort)); err != nil {
		return err
	}
	if err := waitReady(ctx, cp.controllerManager, cp.localHealthy(controllerManagerPort)); err != nil {
		return err
	}
	// Healthy is not working yet: the controller manager takes seconds more to start its
	// controllers. Until the service account controller has given the default namespace its
	// "default" account, no pod can be created there; that is the readiness users notice.
	return waitReady(ctx, cp.controllerManager, cp.defaultServiceAccountExists)
}

func (cp *ControlPlane) defaultServiceAccountExists(ctx context.Context) error {
	client, err := kubernetes.NewForConfig(cp.RESTConfig())
	if err != nil {
		return err
	}
	_, err = client.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
	return err
}

// localHealthy checks /healthz of a component serving on the node's loopback. The components
// serve with a self-signed certificate they make at start, so it is not verified: this is a
// readiness probe, not a client.
func (cp *ControlPlane) localHealthy(port int) func(context.Context) error {
	return func(ctx context.Context) error {
		client := &http.Client{Transport: &http.Transport{
			DialContext:     cp.cfg.Node.DialContext,
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		}}
		defer client.CloseIdleConnections()
		return getOK(ctx, client, "https://"+net.JoinHostPort("127.0.0.1", strconv.Itoa(port))+"/healthz", "ok")
	}
}
