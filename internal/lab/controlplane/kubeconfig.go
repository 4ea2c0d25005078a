package controlplane

import (
	"fmt"
	"net/netip"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// kubeconfigName names the cluster, user and context in the kubeconfigs written here.
const kubeconfigName = "twill-lab"

// WriteKubeconfig writes an admin kubeconfig (bearer token, system:masters) for processes inside
// the underlay, such as agents in lab nodes: they reach Server directly, without a dialer.
func (cp *ControlPlane) WriteKubeconfig(path string) error {
	return cp.writeKubeconfig(path, &clientcmdapi.AuthInfo{Token: cp.token})
}

// WriteKubeconfigFor writes a kubeconfig that authenticates as user in groups with a client
// certificate signed by the lab CA; for instance "system:node:NAME" in "system:nodes" for a
// kubelet under the Node authorizer.
func (cp *ControlPlane) WriteKubeconfigFor(path, user string, groups ...string) error {
	certPEM, keyPEM, err := cp.ca.issueClient(user, groups)
	if err != nil {
		return err
	}
	return cp.writeKubeconfig(path, &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM})
}

// WriteKubeconfigWithToken writes a kubeconfig that authenticates with a bearer token, such as
// a service account's from a TokenRequest (a twill agent's identity, as in its pod on a real
// cluster).
func (cp *ControlPlane) WriteKubeconfigWithToken(path, token string) error {
	return cp.writeKubeconfig(path, &clientcmdapi.AuthInfo{Token: token})
}

func (cp *ControlPlane) writeKubeconfig(path string, auth *clientcmdapi.AuthInfo) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[kubeconfigName] = &clientcmdapi.Cluster{Server: cp.Server(), CertificateAuthorityData: cp.ca.certPEM}
	cfg.AuthInfos[kubeconfigName] = auth
	cfg.Contexts[kubeconfigName] = &clientcmdapi.Context{Cluster: kubeconfigName, AuthInfo: kubeconfigName}
	cfg.CurrentContext = kubeconfigName
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("writing kubeconfig %s: %w", path, err)
	}
	return nil
}

// ServiceCIDR is the cluster's service address range.
func (cp *ControlPlane) ServiceCIDR() netip.Prefix {
	return netip.MustParsePrefix(cp.cfg.ServiceCIDR).Masked()
}
