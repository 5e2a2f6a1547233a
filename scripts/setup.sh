#!/usr/bin/env bash
# One-shot node/CI set-up for ferry on Debian 12 (run as root):
#  - Debian packages: iproute2, iptables, the reference CNI plugins (peers in the tests),
#    bcc (python3-bpfcc), bpftool, iperf3, wrk and nginx (bench/dataplanes.py, which runs
#    its own nginx in a namespace) and Debian's kernel headers for bcc; clang,
#    libbpf-dev and linux-libc-dev for the prebuilt BPF objects (build time only);
#  - /lib/modules/$(uname -r)/{build,source} pointing at those headers, because the running
#    kernel ships none and bcc refuses to compile without them;
#  - a venv (with system site-packages, so `import bcc` works) holding ferry and its deps;
#  - the CNI binaries linked into /opt/cni/bin.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

PKGS=(iproute2 iptables containernetworking-plugins linux-headers-amd64 python3-bpfcc
      bpfcc-tools bpftool iperf3 iputils-ping python3-venv python3-pip util-linux procps kmod
      podman runc busybox-static ethtool nftables clang libbpf-dev linux-libc-dev containerd
      etcd-server etcd-client openssl e2fsprogs
      wrk nginx)  # wrk, nginx: bench/dataplanes.py's HTTP load generator and server
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Kernel headers layout for bcc (see DESIGN.md: Debian's 6.1 headers work for tc programs).
kdir=/lib/modules/$(uname -r)
mkdir -p "$kdir"
build=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1)
common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1)
[[ -e $kdir/build ]] || ln -sfn "$build" "$kdir/build"
[[ -e $kdir/source ]] || ln -sfn "$common" "$kdir/source"

# bpffs, where the eBPF dataplane pins its programs and maps.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

# The venv uses Debian's python3 because python3-bpfcc is built for it.
if [[ ! -x .venv/bin/python ]]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# The prebuilt BPF objects (bpf/*.o) the ELF loader loads, built here and not on the node
# (stdlib only, so before the venv has ferry): package data of the install below. The wheel
# build (setup.py) builds them too, for `pip wheel .` outside this script.
python3 -m loader.objects bpf >/dev/null
# A regular (non-editable) install, as a user or a wheel gets it: the tests then prove the
# package, not the checkout (bpf/ must be package data). FERRY_EDITABLE=1 for development.
# (pip rebuilds and reinstalls a local project on every run, also at the same version.)
editable=()
[[ ${FERRY_EDITABLE:-0} == 1 ]] && editable=(-e)
.venv/bin/python -m pip install -q "${editable[@]}" '.[test]'

# The runtime looks for plugins in CNI_PATH; install ours next to the reference ones.
# FERRY_CNI_BIN (default /opt/cni/bin) lets a second checkout keep its binaries apart; the
# tests read the same directory from FERRY_CNI_PATH. The launchers are deploy/install.sh's.
bin_dir=${FERRY_CNI_BIN:-/opt/cni/bin}
CNI_BIN_DIR=$bin_dir FERRY_VENV=$PWD/.venv bash deploy/install.sh --bin-only >/dev/null
for ref in /usr/lib/cni/*; do
    [[ -e $bin_dir/$(basename "$ref") ]] || ln -s "$ref" "$bin_dir/"
done
echo "ferry set-up done: $(.venv/bin/python --version), binaries in $bin_dir"
