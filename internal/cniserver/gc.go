package cniserver

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/twill-net/twill/internal/cni/spool"
	"github.com/twill-net/twill/internal/ipam"
)

// hostVethPattern matches the names HostVethName makes, and nothing an operator would call a link.
var hostVethPattern = regexp.MustCompile(`^tw[0-9a-f]{11}$`)

// GC releases every attachment whose handle is not in valid, and removes host veths that belong
// to no valid attachment. It runs alone: no ADD, DEL or CHECK overlaps it.
func (s *Server) GC(ctx context.Context, valid []types.GCAttachment) ([]types.GCAttachment, error) {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()

	keep := make(map[ipam.Handle]bool, len(valid))
	keepVeths := make(map[string]bool, len(valid))
	for _, a := range valid {
		h := ipam.Handle{ContainerID: a.ContainerID, IfName: a.IfName}
		keep[h] = true
		keepVeths[HostVethName(h)] = true
	}

	var released []types.GCAttachment
	var errs []error
	done := make(map[ipam.Handle]bool)
	for _, a := range s.alloc.Allocations() {
		h := a.Owner.Handle
		if keep[h] || done[h] {
			continue
		}
		done[h] = true
		if err := s.deleteLocked(ctx, h); err != nil {
			errs = append(errs, err)
			continue
		}
		s.log.Info("GC released a stale attachment", "containerID", h.ContainerID, "ifName", h.IfName, "ip", a.IP)
		released = append(released, types.GCAttachment{ContainerID: h.ContainerID, IfName: h.IfName})
	}

	host, err := s.hostHandle()
	if err != nil {
		return released, errors.Join(append(errs, err)...)
	}
	defer host.Close()
	links, err := listLinks(host)
	if err != nil {
		return released, errors.Join(append(errs, err)...)
	}
	for _, l := range links {
		name := l.Attrs().Name
		if l.Type() != "veth" || !hostVethPattern.MatchString(name) || keepVeths[name] {
			continue
		}
		if err := deleteLinkIfPresent(host, name); err != nil {
			errs = append(errs, err)
			continue
		}
		s.log.Info("GC removed a leftover host veth", "link", name)
	}
	if len(errs) > 0 {
		return released, fmt.Errorf("GC: %w", errors.Join(errs...))
	}
	return released, nil
}

// listLinks dumps the links, retrying when a concurrent change interrupted the dump.
func listLinks(h *netlink.Handle) ([]netlink.Link, error) {
	var err error
	for range 5 {
		var links []netlink.Link
		links, err = h.LinkList()
		if err == nil {
			return links, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, fmt.Errorf("list links on the node: %w", err)
}

// completePendingLoop finishes spooled DELs at start and then now and again (see pendingRescan).
func (s *Server) completePendingLoop(ctx context.Context) {
	s.completePending(ctx)
	tick := time.NewTicker(pendingRescan)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			s.completePending(ctx)
		}
	}
}

// completePending performs every DEL the plugin spooled while it could not reach the agent.
// A DEL that fails stays spooled for the next round.
func (s *Server) completePending(ctx context.Context) {
	if s.cfg.PendingDeleteDir == "" {
		return
	}
	entries, err := spool.List(s.cfg.PendingDeleteDir)
	if err != nil {
		s.log.Warn("cannot read spooled DELs", "err", err)
		return
	}
	for _, e := range entries {
		if e.Err != nil {
			// Retrying will not make an unreadable file readable; keep the log, drop the file.
			s.log.Warn("dropping an unreadable spooled DEL", "err", e.Err)
			_ = spool.Remove(e.Path)
			continue
		}
		h := ipam.Handle{ContainerID: e.Request.ContainerID, IfName: e.Request.IfName}
		if err := s.DeleteEndpoint(ctx, h); err != nil {
			s.log.Warn("spooled DEL failed; will retry", "containerID", h.ContainerID, "ifName", h.IfName, "err", err)
			continue
		}
		if err := spool.Remove(e.Path); err != nil {
			s.log.Warn("spooled DEL done but its file stays", "err", err)
			continue
		}
		s.log.Info("completed a DEL spooled while the agent was away", "containerID", h.ContainerID, "ifName", h.IfName)
	}
}
