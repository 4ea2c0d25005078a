#!/usr/bin/env bash
# Installs what twill's tests, lab and benchmarks need on a fresh Debian machine (run as root):
# Debian's packages, then the upstream control-plane build (cached).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

if [ "$(id -u)" != 0 ]; then
	echo "setup: run as root (it installs packages and the tests create network namespaces)" >&2
	exit 1
fi

# containernetworking-plugins: the reference plugins twill chains with and compares against.
# containerd, runc: the lab nodes' container runtime. iperf3: benchmarks. nftables, conntrack, iproute2: the datapath and its inspection.
# iptables (Debian's, nft-based): kube-proxy's iptables mode, a baseline of the services benchmark.
pkgs=(containernetworking-plugins containerd runc iperf3 nftables conntrack iproute2 util-linux iputils-ping iptables)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "setup: installing ${missing[*]}" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

"$root/hack/build-upstream.sh" "$@" >/dev/null
