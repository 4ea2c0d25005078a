package bench

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"runtime"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netns"

	"github.com/twill-net/twill/internal/datapath/nftdp"
)

// benchNetNS is a network namespace the policy suite made for its table: nothing it does
// touches the machine's own namespace.
type benchNetNS struct {
	name   string
	handle ns.NetNS
}

// benchNSPrefix is the benchmarks' namespace prefix (see cniLabPrefix).
const benchNSPrefix = cniLabPrefix

func newBenchNetNS() (*benchNetNS, error) {
	name := fmt.Sprintf("%s%06x", benchNSPrefix, rand.IntN(1<<24))
	created := make(chan error)
	go func() {
		// NewNamed moves this thread into the new namespace; the thread stays locked so the
		// runtime discards it when the goroutine ends instead of reusing it elsewhere.
		runtime.LockOSThread()
		h, err := netns.NewNamed(name)
		if err == nil {
			h.Close()
		}
		created <- err
	}()
	if err := <-created; err != nil {
		return nil, fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	n := &benchNetNS{name: name}
	var err error
	if n.handle, err = ns.GetNS("/run/netns/" + name); err != nil {
		return nil, errors.Join(err, netns.DeleteNamed(name))
	}
	return n, nil
}

// do runs f on a thread inside the namespace: nft started from there works on its tables.
func (n *benchNetNS) do(f func() error) error {
	return n.handle.Do(func(ns.NetNS) error { return f() })
}

func (n *benchNetNS) close() error {
	err := n.handle.Close()
	if e := netns.DeleteNamed(n.name); e != nil {
		err = errors.Join(err, fmt.Errorf("removing network namespace %s: %w", n.name, e))
	}
	return err
}

// nft runs the nft binary in the namespace with args and returns its output.
func (n *benchNetNS) nft(args ...string) (string, error) {
	var out, stderr bytes.Buffer
	err := n.do(func() error {
		cmd := exec.Command("nft", args...)
		cmd.Stdout, cmd.Stderr = &out, &stderr
		return cmd.Run()
	})
	if err != nil {
		return "", fmt.Errorf("nft %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out.String(), nil
}

// nftGetElementOutput asks the kernel for one element of a set or map of twill's table.
func (n *benchNetNS) nftGetElementOutput(set, key string) (string, error) {
	return n.nft("get", "element", string(nftdp.TableFamily), nftdp.TableName, set, "{ "+key+" }")
}

func (n *benchNetNS) nftGetElement(set, key string) error {
	_, err := n.nftGetElementOutput(set, key)
	return err
}
