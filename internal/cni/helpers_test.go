package cni_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

var (
	buildOnce sync.Once
	builtDir  string
	buildErr  error
)

// pluginDir builds cmd/twill-cni once per test binary into a directory where it is installed
// under its CNI type name, "twill-cni", and returns that directory (a CNI_PATH).
func pluginDir(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		builtDir, buildErr = os.MkdirTemp("", "twt-cnibin-")
		if buildErr != nil {
			return
		}
		goTool, err := exec.LookPath("go")
		if err != nil {
			goTool = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
		}
		cmd := exec.Command(goTool, "build", "-o", filepath.Join(builtDir, "twill-cni"), "github.com/twill-net/twill/cmd/twill-cni")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = errors.New("go build cmd/twill-cni: " + err.Error() + "\n" + string(out))
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtDir != "" {
		os.RemoveAll(builtDir)
	}
	os.Exit(code)
}

// invocation is one exec of the plugin as a runtime would do it.
type invocation struct {
	command     string
	containerID string
	netns       string
	ifName      string
	args        string
	config      string
}

// outcome is what the plugin printed and how long it took.
type outcome struct {
	stdout  []byte
	stderr  []byte
	cniErr  *types.Error // set when the plugin failed
	elapsed time.Duration
}

func runPlugin(t *testing.T, inv invocation) outcome {
	t.Helper()
	dir := pluginDir(t)
	cmd := exec.Command(filepath.Join(dir, "twill-cni"))
	cmd.Env = []string{
		"CNI_COMMAND=" + inv.command,
		"CNI_CONTAINERID=" + inv.containerID,
		"CNI_NETNS=" + inv.netns,
		"CNI_IFNAME=" + inv.ifName,
		"CNI_ARGS=" + inv.args,
		"CNI_PATH=" + dir,
	}
	cmd.Stdin = strings.NewReader(inv.config)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	o := outcome{stdout: stdout.Bytes(), stderr: stderr.Bytes(), elapsed: time.Since(start)}
	if err != nil {
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) {
			t.Fatalf("run plugin: %v", err)
		}
		o.cniErr = &types.Error{}
		if jerr := json.Unmarshal(o.stdout, o.cniErr); jerr != nil {
			t.Fatalf("plugin failed without a CNI error on stdout: %v\nstdout: %s\nstderr: %s", err, o.stdout, o.stderr)
		}
	}
	return o
}

// expectError checks the plugin failed with code and a message containing every part.
func expectError(t *testing.T, o outcome, code uint, parts ...string) {
	t.Helper()
	if o.cniErr == nil {
		t.Fatalf("plugin succeeded, want error code %d; stdout: %s", code, o.stdout)
	}
	if o.cniErr.Code != code {
		t.Errorf("error code %d (%s), want %d", o.cniErr.Code, o.cniErr.Msg, code)
	}
	for _, p := range parts {
		if !strings.Contains(o.cniErr.Msg+" "+o.cniErr.Details, p) {
			t.Errorf("error %q does not mention %q", o.cniErr.Msg, p)
		}
	}
}

func expectSuccess(t *testing.T, o outcome) {
	t.Helper()
	if o.cniErr != nil {
		t.Fatalf("plugin failed: code %d: %s (%s)", o.cniErr.Code, o.cniErr.Msg, o.cniErr.Details)
	}
}
