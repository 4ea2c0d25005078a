#!/usr/bin/env bash
# Brings up the lab (a multi-node Kubernetes cluster in network namespaces of this machine, with
# twill as its pod network) and runs the connectivity test against it. Run as root on a fresh
# Debian machine: it installs what it needs first. Extra arguments go to `twill lab up` (say
# --nodes 2 --routing auto). The lab stays up afterwards; `bin/twill lab down` removes it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

"$root/hack/setup.sh"
CGO_ENABLED=0 go build -o bin/ ./cmd/twill ./cmd/twill-cni
bin/twill lab up "$@"
# The lab writes its kubeconfig (for use from this machine) into its directory.
bin/twill connectivity test --kubeconfig "${TWILL_LAB_DIR:-/var/lib/twill-lab}/kubeconfig"
