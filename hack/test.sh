#!/usr/bin/env bash
# Runs twill's whole test suite on this machine: installs what it needs, builds the pinned
# upstream programs once (cached under /var/cache/twill), then runs every Go test.
# Privileged tests need root; without it they skip and say so.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [ "$(id -u)" = 0 ]; then
	# Build every upstream program the tests use up front, in one go build: test packages run
	# in parallel and would otherwise each start the same long build.
	hack/setup.sh
	TWILL_UPSTREAM_BIN=$(hack/build-upstream.sh | tail -n 1)
	export TWILL_UPSTREAM_BIN
	# Namespaces left by an interrupted earlier run would collide with this run's.
	go run ./hack/cleanup
else
	echo "test: not root: installing nothing; the privileged tests (namespaces, the lab) will skip" >&2
fi

go vet ./...
go test -count=1 -timeout 30m "$@" ./...
