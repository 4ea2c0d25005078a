// Package cniproto is the wire contract between the thin CNI plugin (twill-cni) and the node
// agent: JSON over HTTP on a unix socket. It must stay free of client-go and other heavy
// imports, because the plugin links it and has to start in milliseconds.
package cniproto

import (
	"encoding/json"

	"github.com/containernetworking/cni/pkg/types"
)

// DefaultSocket is where the agent listens unless configured otherwise (CNI config "agentSocket",
// agent flag --cni-socket).
const DefaultSocket = "/run/twill/cni.sock"

// Paths of the agent's HTTP API on the socket.
const (
	PathAdd    = "/v1/add"
	PathDel    = "/v1/del"
	PathCheck  = "/v1/check"
	PathGC     = "/v1/gc"
	PathStatus = "/v1/status"
)

// Request carries one CNI invocation to the agent. Pod identity comes from CNI_ARGS
// (K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID), which kubelet's runtimes always pass.
type Request struct {
	ContainerID  string          `json:"containerID"`
	Netns        string          `json:"netns,omitempty"`
	IfName       string          `json:"ifName"`
	PodNamespace string          `json:"podNamespace,omitempty"`
	PodName      string          `json:"podName,omitempty"`
	PodUID       string          `json:"podUID,omitempty"`
	CNIVersion   string          `json:"cniVersion"`
	Config       json.RawMessage `json:"config,omitempty"`
	// PrevResult is set on CHECK: the result the runtime recorded at ADD.
	PrevResult json.RawMessage `json:"prevResult,omitempty"`
}

// GCRequest asks the agent to release every attachment of this network except the valid ones.
type GCRequest struct {
	ValidAttachments []types.GCAttachment `json:"validAttachments"`
}

// GCResponse says what a GC released, for the caller's log.
type GCResponse struct {
	Released []types.GCAttachment `json:"released"`
}

// Errors travel as a CNI error (code, msg, details) with a non-2xx HTTP status, so the plugin can
// hand the agent's own spec error code to the runtime unchanged.
type Error = types.Error
