package cni

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/twill-net/twill/internal/cni/spool"
	"github.com/twill-net/twill/internal/cniproto"
)

// DefaultAgentTimeout is how long ADD keeps trying to reach the agent unless the config says
// "agentTimeout": long enough to ride out an agent restart, short enough for the runtime to
// retry the sandbox rather than hang.
const DefaultAgentTimeout = 5 * time.Second

// NetConf is twill's network configuration as the runtime hands it on stdin.
type NetConf struct {
	types.PluginConf
	// AgentSocket is the agent's unix socket (default cniproto.DefaultSocket).
	AgentSocket string `json:"agentSocket,omitempty"`
	// PendingDeleteDir is where DELs are spooled while the agent is unreachable.
	PendingDeleteDir string `json:"pendingDeleteDir,omitempty"`
	// AgentTimeout is a Go duration string: how long ADD keeps trying to reach the agent.
	AgentTimeout string `json:"agentTimeout,omitempty"`

	// Timeout is AgentTimeout parsed.
	Timeout time.Duration `json:"-"`
}

// ParseNetConf decodes and validates the config, filling in defaults. Its errors carry the CNI
// spec codes: 6 when the JSON cannot be decoded, 7 when a value is invalid.
func ParseNetConf(data []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure,
			fmt.Sprintf("twill: cannot decode the network config JSON: %v", err), "")
	}
	if conf.AgentSocket == "" {
		conf.AgentSocket = cniproto.DefaultSocket
	}
	if conf.PendingDeleteDir == "" {
		conf.PendingDeleteDir = spool.DefaultDir
	}
	conf.Timeout = DefaultAgentTimeout
	if conf.AgentTimeout != "" {
		d, err := time.ParseDuration(conf.AgentTimeout)
		if err != nil || d <= 0 {
			return nil, types.NewError(types.ErrInvalidNetworkConfig,
				fmt.Sprintf("twill: invalid agentTimeout %q in the network config: use a positive Go duration such as \"5s\"", conf.AgentTimeout), "")
		}
		conf.Timeout = d
	}
	return conf, nil
}
