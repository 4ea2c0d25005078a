package conformance

import (
	"context"

	"github.com/twill-net/twill/internal/kube"
)

// execInPod runs argv in the pod's probe container through the API server and the pod's
// kubelet (kube.ExecInPod).
func (c *Cluster) execInPod(ctx context.Context, ns, pod string, argv []string) (stdout, stderr string, code int, err error) {
	return kube.ExecInPod(ctx, c.Kube, c.REST, ns, pod, containerName, argv)
}
