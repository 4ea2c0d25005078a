package kubenode

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/template"
	"time"
)

// containerdSocketDir holds, inside each node, its containerd's socket, named after the node's
// network namespace.
const containerdSocketDir = "/run/containerd/"

// containerdConfig is the node's containerd configuration (version 2, containerd 1.6 as Debian
// ships it). Paths are the usual ones: inside the node they are the node's own (see
// namespaces.go), so containerd's root, state and runc's root are the node's own.
var containerdConfig = template.Must(template.New("containerd").Parse(`version = 2
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = "{{.Socket}}"

[plugins."io.containerd.internal.v1.opt"]
  path = "/var/lib/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{{.SandboxImage}}"
  # The machine takes CAP_SYS_RESOURCE from every process, so runc cannot give a container a
  # negative oom_score_adj; with this, containerd clamps it to what it may set.
  restrict_oom_score_adj = true

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
`))

// startContainerd writes the node's containerd config, starts containerd and waits until it
// answers on its socket.
func (n *Node) startContainerd(ctx context.Context) error {
	var conf strings.Builder
	if err := containerdConfig.Execute(&conf, map[string]string{
		"Socket": n.ContainerdSocket, "SandboxImage": n.cfg.SandboxImage,
	}); err != nil {
		return err
	}
	path := filepath.Join(n.Dir, "containerd.toml")
	if err := os.WriteFile(path, []byte(conf.String()), 0o644); err != nil {
		return err
	}
	var err error
	n.containerd, err = n.startDaemon("containerd", filepath.Join(n.Dir, "logs", "containerd.log"),
		n.Command(context.Background(), "containerd", "--config", path))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		if n.containerd.exited() {
			return n.containerd.failure("exited at start")
		}
		err := n.ctr(ctx, "version")
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return n.containerd.failure(fmt.Sprintf("did not answer on %s (%v)", n.ContainerdSocket, err))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ImportImage imports an image archive into the node's containerd, in the namespace the CRI
// plugin (so the kubelet) uses, unpacked for its snapshotter.
func (n *Node) ImportImage(ctx context.Context, img Image) error {
	if err := n.ctr(ctx, "images", "import", img.Archive); err != nil {
		return fmt.Errorf("importing %s into %s: %w", img.Name, n.Name, err)
	}
	return nil
}

// ctr runs containerd's client on the node against its containerd, in the CRI plugin's
// namespace. (Files it is given must be on a shared directory.)
func (n *Node) ctr(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := n.Command(ctx, "ctr", append([]string{"--address", n.ContainerdSocket, "--namespace", "k8s.io", "--connect-timeout", "2s"}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
