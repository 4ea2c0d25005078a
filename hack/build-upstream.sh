#!/usr/bin/env bash
# Builds the upstream programs twill's tests and lab run (etcd, the Kubernetes components and
# CoreDNS) from the Go modules pinned under tools/, and caches them. Never downloads a prebuilt binary.
#
#   hack/build-upstream.sh [NAME ...]     NAME: etcd kube-apiserver kube-controller-manager
#                                         kube-scheduler kubelet kube-proxy kubectl coredns
#                                         (default: all)
#
# Prints the directory holding the binaries on its last line. The cache is keyed by the pinned
# go.mod/go.sum and the Go version, so a change of pin rebuilds and an unchanged one takes seconds.
# CoreDNS is keyed apart (a stamp file beside it, .coredns.key, holds the hash of tools/coredns/{go.mod,go.sum,main.go} and
# the Go version): adding or moving its pin must not throw away a 10-minute Kubernetes build.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
k8s_version=v1.37.2
cache=${TWILL_CACHE:-/var/cache/twill}

key=$( (cat "$root"/tools/upstream/go.mod "$root"/tools/upstream/go.sum "$root"/tools/etcd/go.mod "$root"/tools/etcd/go.sum; go version) | sha256sum | cut -c1-12)
bin="$cache/upstream/$key/bin"
mkdir -p "$bin"

coredns_key=$( (cat "$root"/tools/coredns/go.mod "$root"/tools/coredns/go.sum "$root"/tools/coredns/main.go; go version) | sha256sum | cut -c1-12)

all=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl coredns)
want=("$@")
[ ${#want[@]} -gt 0 ] || want=("${all[@]}")

k8s=()
for name in "${want[@]}"; do
	case " ${all[*]} " in *" $name "*) ;; *) echo "build-upstream: unknown program '$name' (known: ${all[*]})" >&2; exit 2 ;; esac
	if [ "$name" = coredns ]; then
		[ -x "$bin/coredns" ] && [ "$(cat "$bin/.coredns.key" 2>/dev/null)" = "$coredns_key" ] && continue
		echo "build-upstream: building coredns (github.com/coredns/coredns with the lab's plugins, tools/coredns; first time a few minutes)" >&2
		start=$(date +%s)
		(cd "$root/tools/coredns" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$bin/coredns.tmp.$$" .) &
		pid=$!
		while kill -0 "$pid" 2>/dev/null; do
			sleep 30
			kill -0 "$pid" 2>/dev/null && echo "build-upstream: still building coredns, $(( $(date +%s) - start ))s so far" >&2
		done
		wait "$pid"
		mv "$bin/coredns.tmp.$$" "$bin/coredns"
		echo "$coredns_key" >"$bin/.coredns.key"
		echo "build-upstream: built coredns in $(( $(date +%s) - start ))s" >&2
		continue
	fi
	[ -x "$bin/$name" ] && continue
	if [ "$name" = etcd ]; then
		echo "build-upstream: building etcd (go.etcd.io/etcd/server/v3, first time about 2 minutes)" >&2
		(cd "$root/tools/etcd" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$bin/etcd.tmp.$$" go.etcd.io/etcd/server/v3)
		mv "$bin/etcd.tmp.$$" "$bin/etcd"
	else
		k8s+=("$name")
	fi
done

if [ ${#k8s[@]} -gt 0 ]; then
	echo "build-upstream: building ${k8s[*]} $k8s_version (first time about 10 minutes on 2 cores; cached after)" >&2
	tmp=$(mktemp -d "$bin/.build.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	pkgs=()
	for name in "${k8s[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$name"); done
	# The version stamp matters: kubectl and the kubelet refuse or misreport an unset version.
	ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37"
	start=$(date +%s)
	(cd "$root/tools/upstream" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}") &
	pid=$!
	while kill -0 "$pid" 2>/dev/null; do
		sleep 30
		kill -0 "$pid" 2>/dev/null && echo "build-upstream: still building (${k8s[*]}), $(( $(date +%s) - start ))s so far" >&2
	done
	wait "$pid"
	for name in "${k8s[@]}"; do mv "$tmp/$name" "$bin/$name"; done
	echo "build-upstream: built in $(( $(date +%s) - start ))s" >&2
fi
echo "$bin"
