// Package cni is the plugin side of twill's CNI: the handlers that the twill-cni binary runs
// for each verb of the CNI spec (1.1.0). The plugin is thin on purpose: it reads the config and
// the runtime's arguments, forwards the request to the node agent over a unix socket
// (internal/cniproto) and prints the agent's answer in the CNI version the runtime asked for.
// It must never link client-go or anything from k8s.io, so that it starts in milliseconds.
package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/twill-net/twill/internal/cni/spool"
	"github.com/twill-net/twill/internal/cniproto"
)

// About is what the binary prints when run by hand without CNI_COMMAND.
const About = "twill-cni: twill's CNI plugin; it forwards each request to the twill agent on this node"

// PluginInfo lists the CNI versions the plugin speaks. Results always come from the agent as
// 1.1.0 and are converted down for older runtimes.
var PluginInfo = version.PluginSupports("0.4.0", "1.0.0", "1.1.0")

// shortConnect bounds how long DEL and STATUS wait for an absent agent: DEL has the spool to
// fall back on and STATUS must answer promptly, so neither needs ADD's full agentTimeout.
const shortConnect = time.Second

// Funcs are the handlers to give skel.PluginMainFuncs.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: Add, Del: Del, Check: Check, GC: GC, Status: Status}
}

// podArgs are the pod identity fields kubelet's runtimes put in CNI_ARGS.
type podArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE types.UnmarshallableString //nolint:revive // name fixed by CNI_ARGS
	K8S_POD_NAME      types.UnmarshallableString //nolint:revive
	K8S_POD_UID       types.UnmarshallableString //nolint:revive
}

// request builds the wire request from the runtime's arguments.
func request(args *skel.CmdArgs, conf *NetConf) (cniproto.Request, error) {
	pa := podArgs{}
	// Runtimes other than kubelet's may send other keys, or none, without IgnoreUnknown.
	pa.IgnoreUnknown = true
	if err := types.LoadArgs(args.Args, &pa); err != nil {
		return cniproto.Request{}, types.NewError(types.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("twill: cannot parse CNI_ARGS %q: %v", args.Args, err), "")
	}
	return cniproto.Request{
		ContainerID:  args.ContainerID,
		Netns:        args.Netns,
		IfName:       args.IfName,
		PodNamespace: string(pa.K8S_POD_NAMESPACE),
		PodName:      string(pa.K8S_POD_NAME),
		PodUID:       string(pa.K8S_POD_UID),
		CNIVersion:   conf.CNIVersion,
		Config:       json.RawMessage(args.StdinData),
	}, nil
}

// Add asks the agent to create the endpoint and prints its result.
func Add(args *skel.CmdArgs) error {
	conf, err := ParseNetConf(args.StdinData)
	if err != nil {
		return err
	}
	if args.Netns == "" {
		return types.NewError(types.ErrInvalidEnvironmentVariables,
			"twill: CNI_NETNS is empty: ADD needs the path of the pod's network namespace", "")
	}
	req, err := request(args, conf)
	if err != nil {
		return err
	}
	client := &agentClient{socket: conf.AgentSocket, connectFor: conf.Timeout}
	var raw json.RawMessage
	if err := client.call(context.Background(), cniproto.PathAdd, req, &raw); err != nil {
		return unreachableAs(err, types.ErrTryAgainLater)
	}
	result, err := types100.NewResult(raw)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure,
			fmt.Sprintf("twill: cannot decode the agent's ADD result: %v", err), string(raw))
	}
	return types.PrintResult(result, conf.CNIVersion)
}

// Del asks the agent to delete the endpoint. With the agent unreachable it spools the request,
// which the agent completes when it is back, and reports success: the runtime may then forget
// the sandbox without leaking its address.
func Del(args *skel.CmdArgs) error {
	conf, err := ParseNetConf(args.StdinData)
	if err != nil {
		return err
	}
	req, err := request(args, conf)
	if err != nil {
		return err
	}
	client := &agentClient{socket: conf.AgentSocket, connectFor: min(conf.Timeout, shortConnect)}
	err = client.call(context.Background(), cniproto.PathDel, req, nil)
	var unreachable *unreachableError
	if !errors.As(err, &unreachable) {
		return err
	}
	if spoolErr := spool.Write(conf.PendingDeleteDir, req); spoolErr != nil {
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("twill: %v; and recording the DEL for later failed too: %v", err, spoolErr), "")
	}
	return nil
}

// Check asks the agent to compare the endpoint with what ADD made.
func Check(args *skel.CmdArgs) error {
	conf, err := ParseNetConf(args.StdinData)
	if err != nil {
		return err
	}
	req, err := request(args, conf)
	if err != nil {
		return err
	}
	if conf.RawPrevResult != nil {
		// The agent reads one result format: convert whatever the runtime recorded to 1.1.0.
		if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
			return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("twill: cannot parse prevResult: %v", err), "")
		}
		prev, err := conf.PrevResult.GetAsVersion(types100.ImplementedSpecVersion)
		if err != nil {
			return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("twill: cannot convert prevResult: %v", err), "")
		}
		if req.PrevResult, err = json.Marshal(prev); err != nil {
			return fmt.Errorf("encode prevResult: %w", err)
		}
	}
	client := &agentClient{socket: conf.AgentSocket, connectFor: conf.Timeout}
	return unreachableAs(client.call(context.Background(), cniproto.PathCheck, req, nil), types.ErrTryAgainLater)
}

// GC asks the agent to release every attachment that is not in cni.dev/valid-attachments.
func GC(args *skel.CmdArgs) error {
	conf, err := ParseNetConf(args.StdinData)
	if err != nil {
		return err
	}
	// An absent list must not read as "nothing is valid": that would delete every pod's network.
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(args.StdinData, &keys); err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("twill: cannot decode the GC config: %v", err), "")
	}
	if _, ok := keys["cni.dev/valid-attachments"]; !ok {
		return types.NewError(types.ErrInvalidNetworkConfig,
			"twill: GC config has no cni.dev/valid-attachments; refusing to treat every attachment as stale", "")
	}
	gcReq := cniproto.GCRequest{ValidAttachments: conf.ValidAttachments}
	if gcReq.ValidAttachments == nil {
		gcReq.ValidAttachments = []types.GCAttachment{}
	}
	client := &agentClient{socket: conf.AgentSocket, connectFor: conf.Timeout}
	var resp cniproto.GCResponse
	return unreachableAs(client.call(context.Background(), cniproto.PathGC, gcReq, &resp), types.ErrTryAgainLater)
}

// Status reports whether the agent is there and ready for ADDs.
func Status(args *skel.CmdArgs) error {
	conf, err := ParseNetConf(args.StdinData)
	if err != nil {
		return err
	}
	client := &agentClient{socket: conf.AgentSocket, connectFor: min(conf.Timeout, shortConnect)}
	return unreachableAs(client.call(context.Background(), cniproto.PathStatus, struct{}{}, nil), types.ErrPluginNotAvailable)
}

// unreachableAs turns a failure to reach the agent into a CNI error with the given spec code;
// the agent's own errors pass through unchanged.
func unreachableAs(err error, code uint) error {
	var unreachable *unreachableError
	if errors.As(err, &unreachable) {
		return types.NewError(code, "twill: "+unreachable.Error(), "")
	}
	return err
}
