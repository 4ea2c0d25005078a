// Package controlplane runs the lab's Kubernetes control plane inside a lab node: etcd,
// kube-apiserver and, on request, kube-controller-manager and kube-scheduler, from the project's
// own build of the pinned upstream modules (package upstream), with a PKI it generates for the
// lab. The agents under test run in other lab nodes and reach the apiserver
// over the underlay (WriteKubeconfig); the test binary and the CLI, in the root network
// namespace, reach it through the node's dialer (RESTConfig).
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/rest"

	"github.com/twill-net/twill/internal/lab/underlay"
)

const (
	// APIServerPort is the apiserver's secure port on the node's underlay address.
	APIServerPort = 6443
	// EtcdClientPort is etcd's client port on the control-plane node's loopback.
	EtcdClientPort = 2379
	etcdPeerPort   = 2380

	// defaultAuthorizationMode is a real cluster's: kubelets are limited to their own node's
	// objects, everyone else to what RBAC grants (system:masters, the admin, to everything).
	defaultAuthorizationMode = "Node,RBAC"
	defaultServiceCIDR       = "10.96.0.0/16"
	defaultReadyTimeout      = 3 * time.Minute

	// adminUser is the user of the admin bearer token, in group system:masters.
	adminUser = "lab-admin"
	// frontProxyClient is the name of the apiserver's client certificate towards aggregated API
	// servers.
	frontProxyClient = "front-proxy-client"
	// serviceAccountIssuer is the conventional in-cluster issuer; pods see it in their tokens.
	serviceAccountIssuer = "https://kubernetes.default.svc.cluster.local"
)

// Config describes a control plane to start.
type Config struct {
	// Dir holds everything the control plane writes: pki/ (CA, certificates, keys, token file),
	// etcd/ (data) and logs/ (one file per process). An existing Dir is reused: same CA, same
	// service account key, same token, same etcd data.
	Dir string
	// BinDir holds the etcd and kube-apiserver programs (see package upstream).
	BinDir string
	// Node is the lab node whose network namespace the control plane runs in.
	Node *underlay.Node
	// AuthorizationMode is the apiserver's --authorization-mode (default "Node,RBAC", as on a
	// real cluster, so a component short of a permission fails in the lab; "AlwaysAllow" turns
	// authorization off).
	AuthorizationMode string
	// ServiceCIDR is the cluster's service range (default 10.96.0.0/16). Its first address, the
	// kubernetes service, is in the apiserver's certificate.
	ServiceCIDR string
	// Controllers also starts kube-controller-manager and kube-scheduler (then BinDir must hold
	// them too): needed for pods (service accounts, scheduling) and Services (EndpointSlices).
	Controllers bool
	// ExtraAPIServerArgs are appended to the apiserver's command line (a later flag wins).
	ExtraAPIServerArgs []string
	// ReadyTimeout bounds the wait for etcd and the apiserver to get ready (default 3 minutes:
	// a first start on a busy 2-core machine is slow).
	ReadyTimeout time.Duration
	// RemoveDirOnStop makes Stop delete Dir. By default Stop leaves it, logs included.
	RemoveDirOnStop bool
}

// ControlPlane is a running etcd and kube-apiserver, and optionally the controllers.
type ControlPlane struct {
	cfg                          Config
	ca                           *authority
	token                        string
	etcd, apiserver              *process
	controllerManager, scheduler *process

	stopOnce sync.Once
	stopErr  error
}

// Start generates what the control plane needs in cfg.Dir, starts etcd (client URL on the node's
// 127.0.0.1) and kube-apiserver (on the node's address, port 6443) in cfg.Node's network
// namespace (and the controllers if cfg.Controllers), and returns once the apiserver's /readyz
// answers ok (and the controllers' /healthz). ctx bounds the start only: the
// processes run until Stop, or until this program dies. On failure nothing is left running and
// the error carries the end of the failing process's log, and Dir is kept whatever
// RemoveDirOnStop says, logs included.
func Start(ctx context.Context, cfg Config) (*ControlPlane, error) {
	if err := cfg.complete(); err != nil {
		return nil, err
	}
	cp := &ControlPlane{cfg: cfg}
	if err := cp.writePKI(); err != nil {
		return nil, fmt.Errorf("control plane: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.ReadyTimeout)
	defer cancel()
	if err := cp.start(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("control plane: %w", err), cp.stopProcesses())
	}
	return cp, nil
}

func (c *Config) complete() error {
	if c.Node == nil || c.Dir == "" || c.BinDir == "" {
		return errors.New("control plane: Config needs Node, Dir and BinDir")
	}
	if c.AuthorizationMode == "" {
		c.AuthorizationMode = defaultAuthorizationMode
	}
	if c.ServiceCIDR == "" {
		c.ServiceCIDR = defaultServiceCIDR
	}
	if c.ReadyTimeout == 0 {
		c.ReadyTimeout = defaultReadyTimeout
	}
	if _, err := netip.ParsePrefix(c.ServiceCIDR); err != nil {
		return fmt.Errorf("control plane: ServiceCIDR: %w", err)
	}
	progs := []string{"etcd", "kube-apiserver"}
	if c.Controllers {
		progs = append(progs, "kube-controller-manager", "kube-scheduler")
	}
	for _, prog := range progs {
		if _, err := os.Stat(filepath.Join(c.BinDir, prog)); err != nil {
			return fmt.Errorf("control plane: %s not in BinDir: %w", prog, err)
		}
	}
	for _, sub := range []string{"pki", "logs"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, sub), 0o700); err != nil {
			return fmt.Errorf("control plane: %w", err)
		}
	}
	return nil
}

func (cp *ControlPlane) path(parts ...string) string {
	return filepath.Join(append([]string{cp.cfg.Dir}, parts...)...)
}

// writePKI creates or reuses the CA, service account key and token, and issues the apiserver's
// certificates afresh (the node's address may differ from a previous run's).
func (cp *ControlPlane) writePKI() error {
	ca, err := loadOrCreateCA(cp.path("pki"))
	if err != nil {
		return err
	}
	cp.ca = ca
	if err := loadOrCreateServiceAccountKey(cp.path("pki", "sa.key"), cp.path("pki", "sa.pub")); err != nil {
		return err
	}
	if cp.token, err = loadOrCreateAdminToken(cp.path("pki", "tokens.csv")); err != nil {
		return err
	}
	serviceIP := netip.MustParsePrefix(cp.cfg.ServiceCIDR).Masked().Addr().Next()
	ips := []net.IP{cp.cfg.Node.IP.AsSlice(), net.IPv4(127, 0, 0, 1), serviceIP.AsSlice()}
	names := []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
	servingCert, servingKey, err := ca.issueServing("kube-apiserver", ips, names)
	if err != nil {
		return err
	}
	// The apiserver presents this to kubelets (logs, exec, port-forward).
	kubeletCert, kubeletKey, err := ca.issueClient("kube-apiserver-kubelet-client", []string{"system:masters"})
	if err != nil {
		return err
	}
	// The apiserver presents this to aggregated API servers, which (like the controller manager
	// and the scheduler, for their own endpoints) trust the request headers it sets only from a
	// certificate with this name signed by the --requestheader-client-ca-file CA.
	proxyCert, proxyKey, err := ca.issueClient(frontProxyClient, nil)
	if err != nil {
		return err
	}
	return writeFiles(map[string][]byte{
		cp.path("pki", "front-proxy-client.crt"):       proxyCert,
		cp.path("pki", "front-proxy-client.key"):       proxyKey,
		cp.path("pki", "apiserver.crt"):                servingCert,
		cp.path("pki", "apiserver.key"):                servingKey,
		cp.path("pki", "apiserver-kubelet-client.crt"): kubeletCert,
		cp.path("pki", "apiserver-kubelet-client.key"): kubeletKey,
	})
}

func (cp *ControlPlane) start(ctx context.Context) error {
	etcdURL := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(EtcdClientPort))
	peerURL := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(etcdPeerPort))
	var err error
	cp.etcd, err = startProcess(cp.cfg.Node, "etcd", filepath.Join(cp.cfg.BinDir, "etcd"), cp.path("logs", "etcd.log"), []string{
		"--name=lab",
		"--data-dir=" + cp.path("etcd"),
		"--listen-client-urls=" + etcdURL,
		"--advertise-client-urls=" + etcdURL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=lab=" + peerURL,
		// A lab's data is disposable; skipping fsync makes every API write much faster.
		"--unsafe-no-fsync=true",
	})
	if err != nil {
		return err
	}
	if err := waitReady(ctx, cp.etcd, cp.etcdHealthy); err != nil {
		return err
	}

	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + cp.cfg.Node.IP.String(),
		"--advertise-address=" + cp.cfg.Node.IP.String(),
		"--secure-port=" + strconv.Itoa(APIServerPort),
		"--tls-cert-file=" + cp.path("pki", "apiserver.crt"),
		"--tls-private-key-file=" + cp.path("pki", "apiserver.key"),
		"--client-ca-file=" + cp.path("pki", "ca.crt"),
		"--kubelet-client-certificate=" + cp.path("pki", "apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + cp.path("pki", "apiserver-kubelet-client.key"),
		"--service-account-key-file=" + cp.path("pki", "sa.pub"),
		"--service-account-signing-key-file=" + cp.path("pki", "sa.key"),
		"--service-account-issuer=" + serviceAccountIssuer,
		"--token-auth-file=" + cp.path("pki", "tokens.csv"),
		"--authorization-mode=" + cp.cfg.AuthorizationMode,
		// NodeRestriction completes the Node authorizer: a kubelet may change only its own Node
		// and the pods bound to it, as kubeadm sets it up.
		"--enable-admission-plugins=NodeRestriction",
		"--service-cluster-ip-range=" + cp.cfg.ServiceCIDR,
		"--requestheader-client-ca-file=" + cp.path("pki", "ca.crt"),
		"--requestheader-allowed-names=" + frontProxyClient,
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + cp.path("pki", "front-proxy-client.crt"),
		"--proxy-client-key-file=" + cp.path("pki", "front-proxy-client.key"),
		"--allow-privileged=true",
		"--profiling=false",
	}
	cp.apiserver, err = startProcess(cp.cfg.Node, "kube-apiserver", filepath.Join(cp.cfg.BinDir, "kube-apiserver"),
		cp.path("logs", "kube-apiserver.log"), append(args, cp.cfg.ExtraAPIServerArgs...))
	if err != nil {
		return err
	}
	if err := waitReady(ctx, cp.apiserver, cp.apiserverReady); err != nil {
		return err
	}
	if cp.cfg.Controllers {
		return cp.startControllers(ctx)
	}
	return nil
}

// waitReady polls check until it succeeds, p exits, or ctx ends.
func waitReady(ctx context.Context, p *process, check func(context.Context) error) error {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		if p.exited() {
			return p.failure("exited before it got ready")
		}
		checkCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := check(checkCtx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w\n(last readiness check: %v)", p.failure("did not get ready: "+ctx.Err().Error()), err)
		case <-p.done:
		case <-tick.C:
		}
	}
}

func (cp *ControlPlane) etcdHealthy(ctx context.Context) error {
	client := &http.Client{Transport: &http.Transport{DialContext: cp.cfg.Node.DialContext}}
	defer client.CloseIdleConnections()
	url := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(EtcdClientPort)) + "/health"
	return getOK(ctx, client, url, `"health":"true"`)
}

func (cp *ControlPlane) apiserverReady(ctx context.Context) error {
	client, err := rest.HTTPClientFor(cp.RESTConfig())
	if err != nil {
		return err
	}
	defer client.CloseIdleConnections()
	return getOK(ctx, client, cp.Server()+"/readyz", "ok")
}

// getOK GETs url and wants status 200 and a body containing want.
func getOK(ctx context.Context, client *http.Client, url, want string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// Server is the apiserver's URL on the underlay, https://<node IP>:6443.
func (cp *ControlPlane) Server() string {
	return "https://" + net.JoinHostPort(cp.cfg.Node.IP.String(), strconv.Itoa(APIServerPort))
}

// RESTConfig is an admin (system:masters) client configuration that works from any network
// namespace, the root one included: its connections are opened inside the control-plane node.
func (cp *ControlPlane) RESTConfig() *rest.Config {
	return &rest.Config{
		Host:            cp.Server(),
		BearerToken:     cp.token,
		TLSClientConfig: rest.TLSClientConfig{CAData: cp.ca.certPEM},
		Dial:            cp.cfg.Node.DialContext,
	}
}

// CAFile is the path of the lab CA's certificate, which signs the apiserver's serving
// certificate and every client certificate the apiserver accepts.
func (cp *ControlPlane) CAFile() string { return cp.path("pki", "ca.crt") }

// Dir is the control plane's directory (pki/, etcd/, logs/).
func (cp *ControlPlane) Dir() string { return cp.cfg.Dir }

// Stop terminates the controllers, then the apiserver, then etcd (SIGTERM, then SIGKILL after a grace period), waits
// for them, and removes Dir if Config.RemoveDirOnStop is set. Later calls return the first
// call's result.
func (cp *ControlPlane) Stop() error {
	cp.stopOnce.Do(func() {
		cp.stopErr = cp.stopProcesses()
		if cp.cfg.RemoveDirOnStop {
			cp.stopErr = errors.Join(cp.stopErr, os.RemoveAll(cp.cfg.Dir))
		}
	})
	return cp.stopErr
}

// stopProcesses stops the running components, dependents first.
func (cp *ControlPlane) stopProcesses() error {
	var errs []error
	for _, p := range []*process{cp.scheduler, cp.controllerManager, cp.apiserver, cp.etcd} {
		if p != nil {
			errs = append(errs, p.stop())
		}
	}
	return errors.Join(errs...)
}
