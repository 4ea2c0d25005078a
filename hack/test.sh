#!/usr/bin/env bash
# Runs twill's whole test suite on this machine: installs what it needs, builds the upstream
# control plane once (cached), then runs every Go test. Privileged tests need root.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

hack/setup.sh etcd kube-apiserver
export TWILL_UPSTREAM_BIN=$(hack/build-upstream.sh etcd kube-apiserver | tail -n 1)

# Leftovers of an interrupted earlier run would collide with this one's namespace names.
go run ./hack/cleanup >/dev/null 2>&1 || true

go vet ./...
go test -count=1 -timeout 30m "$@" ./...
