#!/usr/bin/env bash
# cni-bridge build entry point. Run as root on Debian 12.
#   ./build.sh          build dist/cni-bridge, one executable file (installs what the build needs)
#   ./build.sh test     build, then run the whole test suite (installs what the tests need)
#   ./build.sh bench [--runs N] [--crowd N] [--cases KEYS]   build, then time ADD/DEL through libcni
#                       (a Go client), cni-bridge on each firewall backend next to the reference plugins
#   ./build.sh bench-cri  build, then time pod start and stop through containerd's CRI plugin, both chains
#   ./build.sh demo     build, then attach a throwaway container to the shipped network and show it working
#   ./build.sh install [--prefix DIR]   build, then install the plugin and the default network list
#   ./build.sh uninstall [--prefix DIR] remove what install put there (a changed network list stays)
#   ./build.sh clean    remove build outputs and the virtualenv
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

VENV=.venv
# Debian's python3 is built with PGO/LTO and starts faster than a pyenv build; the bundle uses it.
PYTHON=/usr/bin/python3

BUILD_PACKAGES=(python3 python3-venv python3-dev libpython3.11 binutils iproute2 iptables nftables)
TEST_PACKAGES=(curl iputils-ping socat conntrack busybox-static containernetworking-plugins podman runc containerd strace)
# The benchmark's libcni client (bench/libcni) is Go, built against Debian's libcni sources.
BENCH_PACKAGES=(golang-go golang-github-appc-cni-dev)

log() { printf '==> %s\n' "$*" >&2; }

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "build.sh: run as root (it installs packages; the tests create network namespaces)" >&2
        exit 1
    fi
}

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    if [ ! -f /var/lib/apt/periodic/cni-bridge-updated ] || [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ]; then
        apt-get update -qq
        mkdir -p /var/lib/apt/periodic && touch /var/lib/apt/periodic/cni-bridge-updated
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_venv() {
    local stamp=$VENV/.installed
    if [ ! -x $VENV/bin/python ] || [ "$($VENV/bin/python -c 'import sys; print(sys.base_prefix)')" != /usr ]; then
        rm -rf $VENV
        $PYTHON -m venv $VENV
    fi
    if [ ! -f $stamp ] || [ pyproject.toml -nt $stamp ]; then
        log "installing the package and its build and test dependencies into $VENV"
        $VENV/bin/pip install -q --disable-pip-version-check -e '.[build,test]'
        touch $stamp
    fi
}

build() {
    need_root
    apt_install "${BUILD_PACKAGES[@]}"
    ensure_venv
    local newest
    newest=$(find cni_bridge conf cni-bridge.spec -type f -newer dist/cni-bridge.d/cni-bridge 2>/dev/null | head -n 1 || true)
    if [ -x dist/cni-bridge.d/cni-bridge ] && [ -z "$newest" ]; then
        log "dist/cni-bridge is up to date"
    else
        log "building dist/cni-bridge.d with PyInstaller (one-folder bundle)"
        $VENV/bin/pyinstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller cni-bridge.spec
    fi
    # The plugin is one file that works wherever it is copied: cni_bridge/launcher.sh followed
    # by the bundle as a tar archive, extracted once per build and host (cni_bridge/onefile.py).
    if [ -L dist/cni-bridge ] || [ ! -f dist/cni-bridge ] || [ dist/cni-bridge.d/cni-bridge -nt dist/cni-bridge ] ||
            [ cni_bridge/launcher.sh -nt dist/cni-bridge ] || [ cni_bridge/onefile.py -nt dist/cni-bridge ]; then
        log "packing dist/cni-bridge: the launcher and the bundle in one file"
        $VENV/bin/python -m cni_bridge.onefile pack dist/cni-bridge.d dist/cni-bridge >&2
    fi
    log "built dist/cni-bridge"
}

# Debian's golang-*-dev packages put Go sources under /usr/share/gocode/src and no module
# cache, so the client builds in GOPATH mode: offline, no go.mod, nothing downloaded.
BENCH_CLIENT=build/bench/cni-libcni-bench

build_bench_client() {
    if [ -x $BENCH_CLIENT ] && [ -z "$(find bench/libcni -type f -newer $BENCH_CLIENT | head -n 1)" ]; then
        return 0
    fi
    log "building $BENCH_CLIENT (Go, with libcni from golang-github-appc-cni-dev)"
    mkdir -p "$(dirname $BENCH_CLIENT)"
    (cd bench/libcni && GO111MODULE=off GOPATH=/usr/share/gocode GOPROXY=off GOCACHE="$OLDPWD/build/go-cache" \
        CGO_ENABLED=0 go build -o "$OLDPWD/$BENCH_CLIENT" .)
}

run_bench() {
    apt_install "${TEST_PACKAGES[@]}" "${BENCH_PACKAGES[@]}"
    build_bench_client
    $VENV/bin/python tests/bench.py "$@"
}

run_tests() {
    apt_install "${TEST_PACKAGES[@]}"
    log "mypy"
    $VENV/bin/python -m mypy
    log "pytest"
    CNI_BRIDGE_BIN="$PWD/dist/cni-bridge" $VENV/bin/python -m pytest -q "$@"
}

# --- install ----------------------------------------------------------------------------
# CNI_BIN_DIR and CNI_CONF_DIR choose the two directories; --prefix DIR puts both under DIR
# (for staging a package root). The executable is one file: it is copied into BIN_DIR under a
# temp name and renamed to cni-bridge, so a runtime calling the plugin during an upgrade never
# finds it missing or half copied (done by the built bundle's own `install-cni --executable-only`).

SHIPPED_CONFLIST=conf/10-cni-bridge.conflist

install_dirs() {
    local prefix=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
            --prefix=*) prefix=${1#--prefix=}; shift ;;
            *) echo "build.sh: unknown option $1" >&2; exit 2 ;;
        esac
    done
    BIN_DIR=${CNI_BIN_DIR:-$prefix/opt/cni/bin}
    CONF_DIR=${CNI_CONF_DIR:-$prefix/etc/cni/net.d}
    INSTALLED_CONFLIST=$CONF_DIR/$(basename $SHIPPED_CONFLIST)
}

install_plugin() {
    install_dirs "$@"
    mkdir -p "$CONF_DIR"
    # The placement the Kubernetes DaemonSet does too (cni_bridge/install_cni.py): a copy under
    # a temp name renamed over cni-bridge, a cni-bridge that is not ours refused. Run from the
    # bundle itself, so installing extracts nothing into this host's bundle cache.
    dist/cni-bridge.d/cni-bridge install-cni --executable-only --executable dist/cni-bridge \
        --bin-dir "$BIN_DIR" --watch 0 >&2
    if [ ! -e "$INSTALLED_CONFLIST" ]; then
        install -m 0644 $SHIPPED_CONFLIST "$INSTALLED_CONFLIST"
        log "installed $INSTALLED_CONFLIST"
    elif cmp -s $SHIPPED_CONFLIST "$INSTALLED_CONFLIST"; then
        log "$INSTALLED_CONFLIST is already the shipped one"
    else
        log "skipped $INSTALLED_CONFLIST: a different file is there, left as it is"
    fi
}

uninstall_plugin() {
    install_dirs "$@"
    # Ours: the single file (its launcher's signature line), or an older install's symlink.
    if [ -L "$BIN_DIR/cni-bridge" ] || { [ -f "$BIN_DIR/cni-bridge" ] &&
            head -n 2 "$BIN_DIR/cni-bridge" | grep -q '^# cni-bridge launcher, '; }; then
        rm -f "$BIN_DIR/cni-bridge"
        log "removed $BIN_DIR/cni-bridge"
    fi
    for old in "$BIN_DIR"/cni-bridge-*.d; do
        [ -d "$old" ] && rm -rf "$old" && log "removed $old"
    done
    if cmp -s $SHIPPED_CONFLIST "$INSTALLED_CONFLIST"; then
        rm -f "$INSTALLED_CONFLIST"
        log "removed $INSTALLED_CONFLIST"
    elif [ -e "$INSTALLED_CONFLIST" ]; then
        log "left $INSTALLED_CONFLIST: it differs from the shipped one (remove it by hand)"
    fi
}

case "${1:-build}" in
    build) build ;;
    test) shift; build; run_tests "$@" ;;
    bench) shift; build; run_bench "$@" ;;
    bench-cri) shift; build; apt_install "${TEST_PACKAGES[@]}"; $VENV/bin/python tests/cri_bench.py "$@" ;;
    demo) shift; build; apt_install curl; tests/demo.sh "$@" ;;
    install) shift; build; install_plugin "$@" ;;
    uninstall) shift; need_root; uninstall_plugin "$@" ;;
    clean) rm -rf build dist $VENV ;;
    *) echo "usage: $0 [build|test|bench|bench-cri|demo|install|uninstall|clean]" >&2; exit 2 ;;
esac
