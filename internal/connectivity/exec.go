package connectivity

import (
	"context"

	corev1 "k8s.io/api/core/v1"

	"github.com/twill-net/twill/internal/kube"
)

// execThroughAPI runs argv in the pod's container through the API server and the pod's kubelet
// (kube.ExecInPod).
func (r *run) execThroughAPI(ctx context.Context, pod *corev1.Pod, argv []string) (stdout, stderr string, code int, err error) {
	return kube.ExecInPod(ctx, r.cfg.Kube, r.cfg.REST, pod.Namespace, pod.Name, pod.Spec.Containers[0].Name, argv)
}
