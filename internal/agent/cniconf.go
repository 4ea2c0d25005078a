package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// CNIConfFile is the name of the config the agent writes; "10-" sorts it before configs other
// CNIs may have left, since the runtime uses the first one.
const CNIConfFile = "10-twill.conflist"

// CNIConfList returns twill's network configuration list: twill first, then the reference
// portmap plugin for hostPort pods.
func CNIConfList(socket, pendingDeleteDir string) ([]byte, error) {
	conf := map[string]any{
		"cniVersion": "1.0.0", // Debian's reference plugins (portmap) accept up to 1.0.0
		"name":       "twill",
		"plugins": []any{
			map[string]any{"type": "twill-cni", "agentSocket": socket, "pendingDeleteDir": pendingDeleteDir},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}, "snat": true},
		},
	}
	return json.MarshalIndent(conf, "", "  ")
}

// writeCNIConfigWhenReady writes the CNI config once the agent can serve ADDs. The kubelet keeps
// the node NotReady while no CNI config exists, so pods are not scheduled to a node whose
// networking is not up yet.
func (a *Agent) writeCNIConfigWhenReady(ctx context.Context) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for a.ready() != nil {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	data, err := CNIConfList(a.cfg.CNISocket, a.cfg.PendingDeleteDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(a.cfg.CNIConfDir, 0o755); err != nil {
		return fmt.Errorf("creating CNI config dir: %w", err)
	}
	path := filepath.Join(a.cfg.CNIConfDir, CNIConfFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("writing CNI config: %w", err)
	}
	// Rename, so the runtime never reads a half-written file.
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing CNI config: %w", err)
	}
	a.log.Info("CNI config written", "path", path)
	return nil
}
