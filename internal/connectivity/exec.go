package connectivity

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"
)

// execThroughAPI runs argv in the pod's container through the API server and the pod's kubelet, as
// kubectl exec does (WebSocket, falling back to SPDY for servers without it). code is argv's
// exit code, or -1 when it could not run (err says why).
func (r *run) execThroughAPI(ctx context.Context, pod *corev1.Pod, argv []string) (stdout, stderr string, code int, err error) {
	req := r.cfg.Kube.CoreV1().RESTClient().Post().
		Resource("pods").Namespace(pod.Namespace).Name(pod.Name).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{
			Container: pod.Spec.Containers[0].Name, Command: argv, Stdout: true, Stderr: true,
		}, scheme.ParameterCodec)
	spdy, err := remotecommand.NewSPDYExecutor(r.cfg.REST, "POST", req.URL())
	if err != nil {
		return "", "", -1, fmt.Errorf("exec in %s: %w", pod.Name, err)
	}
	ws, err := remotecommand.NewWebSocketExecutor(r.cfg.REST, "GET", req.URL().String())
	if err != nil {
		return "", "", -1, fmt.Errorf("exec in %s: %w", pod.Name, err)
	}
	executor, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return "", "", -1, fmt.Errorf("exec in %s: %w", pod.Name, err)
	}
	var out, errOut bytes.Buffer
	err = executor.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &out, Stderr: &errOut})
	var exit utilexec.ExitError
	switch {
	case err == nil:
		return out.String(), errOut.String(), 0, nil
	case errors.As(err, &exit):
		return out.String(), errOut.String(), exit.ExitStatus(), nil
	}
	return out.String(), errOut.String(), -1, fmt.Errorf("exec in %s: %w", pod.Name, err)
}
