package cni

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

// requestTimeout caps one call once the agent has been reached, so a wedged agent cannot hang
// the runtime forever; the agent's own work (plumbing, policy) finishes well inside it.
const requestTimeout = 2 * time.Minute

// unreachableError says the agent's socket could not be reached (or dropped the connection),
// as opposed to the agent answering with an error of its own.
type unreachableError struct {
	socket string
	waited time.Duration
	err    error
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("cannot reach the twill agent at %s (tried for %s: %v): check that `twill agent` is running on this node and listening on that socket",
		e.socket, e.waited, e.err)
}

func (e *unreachableError) Unwrap() error { return e.err }

// agentClient speaks the cniproto HTTP+JSON contract to the agent over its unix socket.
type agentClient struct {
	socket string
	// connectFor is how long dialing keeps retrying: the agent may be restarting.
	connectFor time.Duration
}

// call POSTs body to path and decodes a 2xx reply into out (when out is not nil). A non-2xx
// reply is the agent's CNI error, returned unchanged as *types.Error so its spec code reaches
// the runtime. Failing to reach the agent is an *unreachableError.
func (c *agentClient) call(ctx context.Context, path string, body, out any) error {
	payload, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("encode request for %s: %w", path, err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.connectFor+requestTimeout)
	defer cancel()

	start := time.Now()
	conn, err := c.dial(ctx)
	if err != nil {
		return &unreachableError{socket: c.socket, waited: time.Since(start).Round(time.Millisecond), err: err}
	}
	defer conn.Close()
	// The whole exchange, connection included, ends with ctx (requestTimeout).
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	resp, err := exchange(conn, path, payload)
	if err != nil {
		return &unreachableError{socket: c.socket, waited: time.Since(start).Round(time.Millisecond), err: err}
	}
	data := resp.body
	if resp.code < 200 || resp.code > 299 {
		cniErr := &types.Error{}
		if json.Unmarshal(data, cniErr) != nil || (cniErr.Code == 0 && cniErr.Msg == "") {
			return types.NewError(types.ErrInternal,
				fmt.Sprintf("twill agent answered %s on %s with %s", path, c.socket, resp.status), string(data))
		}
		return cniErr
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode the agent's reply to %s: %w", path, err)
	}
	return nil
}

// dial connects to the socket, retrying until connectFor has passed: a missing socket or a
// refused connection is what an agent in the middle of a restart looks like.
func (c *agentClient) dial(ctx context.Context) (net.Conn, error) {
	deadline := time.Now().Add(c.connectFor)
	var dialer net.Dialer
	pause := 20 * time.Millisecond
	// The reason worth reporting is why the socket refused us (absent, nobody listening), not
	// that the last attempt was cut short by the deadline.
	var cause error
	for {
		attemptCtx, cancel := context.WithDeadline(ctx, deadline)
		conn, err := dialer.DialContext(attemptCtx, "unix", c.socket)
		cutShort := attemptCtx.Err() != nil
		cancel()
		if err == nil {
			return conn, nil
		}
		if !cutShort {
			cause = err
		}
		left := time.Until(deadline)
		if left <= 0 || ctx.Err() != nil {
			if cause != nil {
				return nil, cause
			}
			return nil, err
		}
		time.Sleep(min(pause, left))
		pause = min(pause*2, 250*time.Millisecond)
	}
}
