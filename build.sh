#!/usr/bin/env bash
# cni-bridge build entry point. Run as root on Debian 12.
#   ./build.sh          build dist/cni-bridge (installs what the build needs)
#   ./build.sh test     build, then run the whole test suite (installs what the tests need)
#   ./build.sh bench    build, then time the plugin next to the reference plugins
#   ./build.sh clean    remove build outputs and the virtualenv
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

VENV=.venv
# Debian's python3 is built with PGO/LTO and starts faster than a pyenv build; the bundle uses it.
PYTHON=/usr/bin/python3

BUILD_PACKAGES=(python3 python3-venv python3-dev libpython3.11 binutils iproute2 iptables)
TEST_PACKAGES=(iputils-ping socat conntrack busybox-static containernetworking-plugins)

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
        log "building dist/cni-bridge with PyInstaller (one-folder bundle)"
        $VENV/bin/pyinstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller cni-bridge.spec
    fi
    # Runtimes look for an executable named after the plugin type: a symlink into the bundle.
    ln -sfn cni-bridge.d/cni-bridge dist/cni-bridge
    log "built $(readlink -f dist/cni-bridge)"
}

run_tests() {
    apt_install "${TEST_PACKAGES[@]}"
    log "mypy"
    $VENV/bin/python -m mypy
    log "pytest"
    CNI_BRIDGE_BIN="$PWD/dist/cni-bridge" $VENV/bin/python -m pytest -q "$@"
}

case "${1:-build}" in
    build) build ;;
    test) shift; build; run_tests "$@" ;;
    bench) shift; build; apt_install "${TEST_PACKAGES[@]}"; $VENV/bin/python tests/bench.py "$@" ;;
    clean) rm -rf build dist $VENV ;;
    *) echo "usage: $0 [build|test|bench|clean]" >&2; exit 2 ;;
esac
