// Package spool keeps the CNI DELs that the plugin could not hand to the agent (agent down or
// restarting) as one file per attachment in a directory, so that no address or veth leaks: the
// agent completes every spooled DEL when it is back. The plugin writes, the agent reads and
// removes. The package stays free of heavy imports because the plugin links it.
package spool

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/twill-net/twill/internal/cniproto"
)

// DefaultDir is where pending DELs are spooled unless the CNI config says "pendingDeleteDir".
const DefaultDir = "/var/lib/twill/pending-del"

const fileSuffix = ".json"

// FileName is the spool file of one attachment. It is a hash of container ID and interface
// name so that no combination of the two (both may contain '_' or '.') can collide or escape
// the directory; the request inside the file carries the readable names.
func FileName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifName))
	return hex.EncodeToString(sum[:]) + fileSuffix
}

// Write records a DEL request atomically: a reader sees either no file or the whole request,
// never a torn one, because the file is written under a temporary name, synced, then renamed.
func Write(dir string, req cniproto.Request) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pending-delete dir %s: %w", dir, err)
	}
	data, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("encode pending delete: %w", err)
	}
	final := filepath.Join(dir, FileName(req.ContainerID, req.IfName))
	// The leading dot keeps half-written files out of List.
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("create pending-delete file in %s: %w", dir, err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return fmt.Errorf("rename pending delete into place: %w", err)
	}
	return nil
}

// Entry is one spooled DEL: the file it came from and the request, or why it could not be read.
type Entry struct {
	Path    string
	Request cniproto.Request
	Err     error
}

// List returns every spooled DEL in dir. A missing directory means nothing is pending.
func List(dir string) ([]Entry, error) {
	names, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read pending-delete dir %s: %w", dir, err)
	}
	var entries []Entry
	for _, de := range names {
		name := de.Name()
		if de.IsDir() || strings.HasPrefix(name, ".") || !strings.HasSuffix(name, fileSuffix) {
			continue
		}
		e := Entry{Path: filepath.Join(dir, name)}
		data, err := os.ReadFile(e.Path)
		if err == nil {
			err = json.Unmarshal(data, &e.Request)
		}
		if err == nil && (e.Request.ContainerID == "" || e.Request.IfName == "") {
			err = errors.New("request has no containerID or ifName")
		}
		if err != nil {
			e.Err = fmt.Errorf("read pending delete %s: %w", e.Path, err)
		}
		entries = append(entries, e)
	}
	return entries, nil
}

// Lookup returns the spooled DEL of one attachment, if there is one.
func Lookup(dir, containerID, ifName string) (Entry, bool) {
	path := filepath.Join(dir, FileName(containerID, ifName))
	data, err := os.ReadFile(path)
	if err != nil {
		return Entry{}, false
	}
	e := Entry{Path: path}
	if err := json.Unmarshal(data, &e.Request); err != nil {
		e.Err = fmt.Errorf("read pending delete %s: %w", path, err)
	}
	return e, true
}

// Remove deletes a completed entry; a file already gone is fine.
func Remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove pending delete %s: %w", path, err)
	}
	return nil
}
