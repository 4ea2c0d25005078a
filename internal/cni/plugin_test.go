package cni_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/twill-net/twill/internal/cni/spool"
	"github.com/twill-net/twill/internal/cniserver"
	"github.com/twill-net/twill/internal/cniserver/cnitest"
	"github.com/twill-net/twill/internal/ipam"
	"github.com/twill-net/twill/internal/testutil"
)

func netconf(version, socket, pendingDir, extra string) string {
	return fmt.Sprintf(`{"cniVersion":%q,"name":"pods","type":"twill-cni","agentSocket":%q,"pendingDeleteDir":%q%s}`,
		version, socket, pendingDir, extra)
}

// TestPluginLinksNoKubernetes keeps the plugin thin: a runtime execs it for every pod, so it
// must not drag in client-go (tens of milliseconds of init and megabytes of binary), nor
// net/http (TLS, HTTP/2: about 4 ms more CPU per exec; see exchange.go).
func TestPluginLinksNoKubernetes(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/twill-net/twill/cmd/twill-cni").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "k8s.io/") || strings.HasPrefix(dep, "sigs.k8s.io/") || dep == "net/http" || dep == "crypto/tls" {
			t.Errorf("twill-cni links %s", dep)
		}
	}
}

func TestPluginVersionAndStartTime(t *testing.T) {
	var times []time.Duration
	for range 15 {
		o := runPlugin(t, invocation{command: "VERSION"})
		expectSuccess(t, o)
		var info struct {
			CNIVersion        string   `json:"cniVersion"`
			SupportedVersions []string `json:"supportedVersions"`
		}
		if err := json.Unmarshal(o.stdout, &info); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(info.SupportedVersions, []string{"0.4.0", "1.0.0", "1.1.0"}) {
			t.Fatalf("supported versions %v", info.SupportedVersions)
		}
		times = append(times, o.elapsed)
	}
	slices.Sort(times)
	t.Logf("CNI_COMMAND=VERSION wall time over %d runs: min %s, median %s, max %s",
		len(times), times[0], times[len(times)/2], times[len(times)-1])
}

func TestPluginConfigErrors(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "none.sock")
	base := invocation{command: "ADD", containerID: "c1", netns: "/var/run/netns/twt-none", ifName: "eth0"}

	bad := base
	bad.config = `{"cniVersion":"1.1.0","name":"pods","type":"twill-cni",`
	expectError(t, runPlugin(t, bad), types.ErrDecodingFailure, "unmarshal")

	bad.config = netconf("9.9.9", sock, dir, "")
	expectError(t, runPlugin(t, bad), types.ErrIncompatibleCNIVersion, "incompatible CNI versions", "9.9.9")

	bad.config = netconf("1.1.0", sock, dir, `,"agentTimeout":"whenever"`)
	expectError(t, runPlugin(t, bad), types.ErrInvalidNetworkConfig, `agentTimeout "whenever"`)

	noNetns := base
	noNetns.netns = ""
	noNetns.config = netconf("1.1.0", sock, dir, "")
	expectError(t, runPlugin(t, noNetns), types.ErrInvalidEnvironmentVariables, "CNI_NETNS")

	gc := invocation{command: "GC", config: netconf("1.1.0", sock, dir, "")}
	expectError(t, runPlugin(t, gc), types.ErrInvalidNetworkConfig, "cni.dev/valid-attachments")
}

// TestPluginAgentDown covers a node whose agent is not running (yet): ADD gives up within
// agentTimeout with "try again later", STATUS says the plugin is not available, and DEL is
// spooled, reported as done, and completed by the agent when it starts.
func TestPluginAgentDown(t *testing.T) {
	sockDir := cnitest.ShortTempDir(t)
	sock := filepath.Join(sockDir, "cni.sock")
	pending := filepath.Join(t.TempDir(), "pending-del")
	const timeout = 400 * time.Millisecond
	conf := netconf("1.1.0", sock, pending, fmt.Sprintf(`,"agentTimeout":%q`, timeout))

	add := runPlugin(t, invocation{command: "ADD", containerID: "c1", netns: "/var/run/netns/twt-none", ifName: "eth0", config: conf})
	// The message names the socket, the real reason (not the deadline) and what to check.
	expectError(t, add, types.ErrTryAgainLater, sock, "no such file or directory", "`twill agent`")
	if add.elapsed < timeout || add.elapsed > timeout+time.Second {
		t.Errorf("ADD with the agent down returned after %s, want about agentTimeout (%s)", add.elapsed, timeout)
	}
	t.Logf("ADD with the agent down failed after %s (agentTimeout %s): %s", add.elapsed, timeout, add.cniErr.Msg)

	status := runPlugin(t, invocation{command: "STATUS", config: conf})
	expectError(t, status, types.ErrPluginNotAvailable, sock, "`twill agent`")

	check := runPlugin(t, invocation{command: "CHECK", containerID: "c1", netns: "/var/run/netns/twt-none", ifName: "eth0", config: conf})
	expectError(t, check, types.ErrTryAgainLater, sock)

	del := runPlugin(t, invocation{command: "DEL", containerID: "c1", ifName: "eth0",
		args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_UID=u1", config: conf})
	expectSuccess(t, del)
	entries, err := spool.List(pending)
	if err != nil || len(entries) != 1 || entries[0].Err != nil {
		t.Fatalf("spool after DEL: %+v, %v; want one readable entry", entries, err)
	}
	if r := entries[0].Request; r.ContainerID != "c1" || r.IfName != "eth0" || r.PodName != "web" || r.PodUID != "u1" {
		t.Errorf("spooled request %+v", r)
	}

	// The agent comes back: the spooled DEL releases what the pod held.
	testutil.RequireRoot(t)
	node := cnitest.NewNetns(t, "node")
	alloc := cnitest.NewFakeAllocator("192.0.2.0/24", "")
	h := ipam.Handle{ContainerID: "c1", IfName: "eth0"}
	if _, err := alloc.Allocate(t.Context(), ipam.Owner{Handle: h}); err != nil {
		t.Fatal(err)
	}
	cnitest.StartServer(t, cniserver.Config{SocketPath: sock, PendingDeleteDir: pending, HostNetns: node.Path()}, alloc)
	deadline := time.Now().Add(5 * time.Second)
	for alloc.Holds(h) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if alloc.Holds(h) {
		t.Error("the agent did not complete the spooled DEL")
	}
	if files, _ := os.ReadDir(pending); len(files) != 0 {
		t.Errorf("pending-delete dir still holds %d files", len(files))
	}
	// And STATUS now answers.
	expectSuccess(t, runPlugin(t, invocation{command: "STATUS", config: conf}))
}

// TestPluginAddPrintsRequestedVersion runs the plugin as a runtime would for each CNI version
// it supports and checks the printed result is in that version.
func TestPluginAddPrintsRequestedVersion(t *testing.T) {
	testutil.RequireRoot(t)
	node := cnitest.NewNetns(t, "node")
	alloc := cnitest.NewFakeAllocator("192.0.2.0/24", "2001:db8:1::/64")
	_, cfg, _ := cnitest.StartServer(t, cniserver.Config{HostNetns: node.Path(), MTU: 1450}, alloc)

	for _, version := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		t.Run(version, func(t *testing.T) {
			pod := cnitest.NewNetns(t, "pod")
			inv := invocation{command: "ADD", containerID: "v" + strings.ReplaceAll(version, ".", ""), netns: pod.Path(), ifName: "eth0",
				args:   "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_UID=u1;OTHER=1",
				config: netconf(version, cfg.SocketPath, cfg.PendingDeleteDir, "")}
			o := runPlugin(t, inv)
			expectSuccess(t, o)
			var res struct {
				CNIVersion string `json:"cniVersion"`
				IPs        []struct {
					Version string `json:"version"`
					Address string `json:"address"`
				} `json:"ips"`
				Interfaces []struct {
					Name    string `json:"name"`
					Sandbox string `json:"sandbox"`
				} `json:"interfaces"`
			}
			if err := json.Unmarshal(o.stdout, &res); err != nil {
				t.Fatalf("result: %v\n%s", err, o.stdout)
			}
			if res.CNIVersion != version {
				t.Errorf("result cniVersion %q, want %q", res.CNIVersion, version)
			}
			if len(res.IPs) != 2 || len(res.Interfaces) != 2 || res.Interfaces[1].Sandbox != pod.Path() {
				t.Errorf("result %s", o.stdout)
			}
			// 0.4.0 results name each address's IP version; 1.x results do not.
			if (version == "0.4.0") != (res.IPs[0].Version != "") {
				t.Errorf("result in %s format has ips[0].version %q", version, res.IPs[0].Version)
			}
			h := ipam.Handle{ContainerID: inv.containerID, IfName: "eth0"}
			for _, a := range alloc.Allocations() {
				if a.Owner.Handle == h && (a.Owner.PodName != "web" || a.Owner.PodNamespace != "default" || a.Owner.PodUID != "u1") {
					t.Errorf("allocation owner %+v: pod identity from CNI_ARGS lost", a.Owner)
				}
			}
			inv.command = "DEL"
			expectSuccess(t, runPlugin(t, inv))
			if alloc.Holds(h) {
				t.Error("DEL did not release")
			}
		})
	}
}
