// Command twill-cni is twill's CNI plugin, executed by the container runtime. All the work is
// in internal/cni; this main only hands the handlers to the CNI skeleton.
package main

import (
	"runtime"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/twill-net/twill/internal/cni"
)

func init() {
	// A CNI plugin may switch network namespaces on its thread; keep main on one OS thread.
	runtime.LockOSThread()
}

func main() {
	skel.PluginMainFuncs(cni.Funcs(), cni.PluginInfo, cni.About)
}
