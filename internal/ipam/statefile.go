package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
)

// The node's allocations live on local disk, one file per address, named by the address, holding
// the Allocation as JSON followed by a newline. The file is created with O_EXCL, so an address
// can never be recorded twice, even by two processes sharing the directory; it is synced before
// Allocate returns, so an address handed to a runtime is on disk. A crash in the middle of a
// write leaves a file that does not parse as a whole record ending in a newline, or names another
// address; such a file is recognised when the allocator starts and removed, freeing the address.
// That is safe because Allocate had not returned: nobody was given the address.

// errRecorded: the address has a record file already.
var errRecorded = errors.New("address already recorded")

type stateDir string

func (d stateDir) path(ip netip.Addr) string { return filepath.Join(string(d), ip.String()) }

// write records the allocation; errRecorded when its address is recorded already.
func (d stateDir) write(a Allocation) error {
	data, err := json.Marshal(a)
	if err != nil {
		return err
	}
	data = append(data, '\n')
	path := d.path(a.IP)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s: %w", a.IP, errRecorded)
	}
	if err != nil {
		return fmt.Errorf("recording %s: %w", a.IP, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = d.syncDir() // the new directory entry must survive a crash too
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("recording %s: %w", a.IP, err)
	}
	return nil
}

// remove deletes the record of an address; a record that is not there is fine.
func (d stateDir) remove(ip netip.Addr) error {
	if err := os.Remove(d.path(ip)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing record of %s: %w", ip, err)
	}
	return nil
}

func (d stateDir) syncDir() error {
	f, err := os.Open(string(d))
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// load reads every record. Broken records are returned by file name separately, for the caller
// to report and remove.
func (d stateDir) load() (good []Allocation, broken []string, err error) {
	if err := os.MkdirAll(string(d), 0o700); err != nil {
		return nil, nil, fmt.Errorf("creating IPAM state directory: %w", err)
	}
	entries, err := os.ReadDir(string(d))
	if err != nil {
		return nil, nil, fmt.Errorf("reading IPAM state directory: %w", err)
	}
	for _, e := range entries {
		if ip, err := netip.ParseAddr(e.Name()); !e.Type().IsRegular() || err != nil || ip.String() != e.Name() {
			continue // not a record: nothing of ours, leave it alone
		}
		a, ok := d.parse(e.Name())
		if !ok {
			broken = append(broken, e.Name())
			continue
		}
		good = append(good, a)
	}
	return good, broken, nil
}

func (d stateDir) parse(name string) (Allocation, bool) {
	ip := netip.MustParseAddr(name)
	data, err := os.ReadFile(filepath.Join(string(d), name))
	if err != nil || len(data) == 0 || data[len(data)-1] != '\n' {
		return Allocation{}, false
	}
	var a Allocation
	if err := json.Unmarshal(data, &a); err != nil {
		return Allocation{}, false
	}
	if a.IP != ip || !a.Block.Contains(ip) || a.Owner.ContainerID == "" {
		return Allocation{}, false
	}
	return a, true
}

// discard removes a broken record.
func (d stateDir) discard(name string) error {
	return os.Remove(filepath.Join(string(d), name))
}
