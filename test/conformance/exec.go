package conformance

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

// execInPod runs argv in the pod's first container through the API server and the pod's
// kubelet, as `kubectl exec` does (WebSocket, falling back to SPDY). code is argv's exit code,
// or -1 when it could not run (err says why).
func (c *Cluster) execInPod(ctx context.Context, ns, pod string, argv []string) (stdout, stderr string, code int, err error) {
	req := c.Kube.CoreV1().RESTClient().Post().
		Resource("pods").Namespace(ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: containerName, Command: argv, Stdout: true, Stderr: true},
			scheme.ParameterCodec)
	spdy, err := remotecommand.NewSPDYExecutor(c.REST, "POST", req.URL())
	if err != nil {
		return "", "", -1, fmt.Errorf("exec in %s/%s: %w", ns, pod, err)
	}
	ws, err := remotecommand.NewWebSocketExecutor(c.REST, "GET", req.URL().String())
	if err != nil {
		return "", "", -1, fmt.Errorf("exec in %s/%s: %w", ns, pod, err)
	}
	executor, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return "", "", -1, fmt.Errorf("exec in %s/%s: %w", ns, pod, err)
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
	return out.String(), errOut.String(), -1, fmt.Errorf("exec in %s/%s: %w", ns, pod, err)
}
