#!/usr/bin/env bash
# The one-command demo (`./build.sh demo`): a container on a throwaway copy of the shipped
# network, an HTTP server in it, fetched through a published port, then CHECK and DEL.
#
# Nothing touches the real host's network: a fresh namespace plays the host (its uplink and
# "own address" 203.0.113.10 are a veth into a second namespace playing the LAN), a third one
# is the container. The plugin runs through its own runner (`cni-bridge add|check|del`),
# exactly as an operator would call it. Everything is removed on exit, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

BIN=${CNI_BRIDGE_BIN:-$PWD/dist/cni-bridge}
CONFLIST=conf/10-cni-bridge.conflist
HOST_ADDR=203.0.113.10   # documentation range (RFC 5737): never a real network
LAN_ADDR=203.0.113.1
HOST_PORT=8080
ID=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
HOST=cbdemo-$ID-host; LAN=cbdemo-$ID-lan; CTR=cbdemo-$ID-ctr
WORK=$(mktemp -d /tmp/cni-bridge-demo.XXXXXX)
# The single file extracts its bundle on its first start: here into $WORK, removed on exit.
export CNI_BRIDGE_CACHE_DIR=${CNI_BRIDGE_CACHE_DIR:-$WORK/bundles}
SERVER_PID=""

cleanup() {
    local status=$?
    trap - EXIT INT TERM HUP
    set +e  # clean up everything, whatever fails on the way
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    for ns in "$CTR" "$LAN" "$HOST"; do
        [ -e "/run/netns/$ns" ] && ip netns delete "$ns"
    done
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'echo "interrupted: cleaning up" >&2; exit 130' INT TERM HUP

in_host() { ip netns exec "$HOST" "$@"; }
say() { printf '  %-10s %s\n' "$1" "$2"; }
fail() { echo "demo FAILED: $*" >&2; exit 1; }

# --- a host, its LAN and a container, all throwaway namespaces -----------------------------
for ns in "$HOST" "$LAN" "$CTR"; do ip netns add "$ns"; done
ip -n "$HOST" link set lo up
ip -n "$HOST" link add eth0 type veth peer name eth0 netns "$LAN"
ip -n "$HOST" addr add $HOST_ADDR/24 dev eth0
ip -n "$LAN" addr add $LAN_ADDR/24 dev eth0
ip -n "$HOST" link set eth0 up
ip -n "$LAN" link set eth0 up
ip -n "$HOST" route add default via $LAN_ADDR

# --- the shipped network list, with its state moved into the work directory ---------------
mkdir -p "$WORK/net.d" "$WORK/bin"
ln -s "$BIN" "$WORK/bin/cni-bridge"
python3 - "$CONFLIST" "$WORK" > "$WORK/net.d/10-cni-bridge.conflist" <<'EOF'
import json, sys
conflist = json.load(open(sys.argv[1]))
for plugin in conflist["plugins"]:
    if plugin["type"] == "cni-bridge":
        plugin["stateDir"] = sys.argv[2] + "/state"
        plugin["ipam"]["dataDir"] = sys.argv[2] + "/ipam"
print(json.dumps(conflist, indent=2))
EOF
NETWORK=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["name"])' "$CONFLIST")
export NETCONFPATH=$WORK/net.d CNI_PATH=$WORK/bin CNI_CACHE_DIR=$WORK/cache
export CAP_ARGS="{\"portMappings\":[{\"hostPort\":$HOST_PORT,\"containerPort\":80,\"protocol\":\"tcp\"}]}"
CONTAINER_ID=cbdemo-$ID
runner() { local command=$1; shift; in_host "$BIN" "$command" --container-id "$CONTAINER_ID" "$@"; }

echo "cni-bridge demo: network \"$NETWORK\" from $CONFLIST (a throwaway copy), in throwaway namespaces"

# --- ADD ------------------------------------------------------------------------------------
runner add "$NETWORK" "/run/netns/$CTR" > "$WORK/result.json" || fail "add"
# The addresses for the summary, and the container's IPv4 address to wait for the server on.
{ read -r ADDRESSES; read -r CTR_V4; } < <(python3 - "$WORK/result.json" <<'EOF'
import json, sys
addresses = [ip["address"] for ip in json.load(open(sys.argv[1]))["ips"]]
print(", ".join(addresses))
print(next(a.split("/")[0] for a in addresses if "." in a))
EOF
)
say "attached" "container eth0: $ADDRESSES"

# --- the rules it made (every one carries a comment naming the container) --------------------
RULES=$( (in_host iptables-save; in_host ip6tables-save) | grep -e '-A .*cni-bridge' || true)
OWN=$(echo "$RULES" | grep -e "id=$CONTAINER_ID " || true)
say "rules" "$(echo "$OWN" | grep -c .) iptables/ip6tables rules for this container, \
$(echo "$RULES" | grep -c -e 'shared=') shared by the bridge's containers; for example:"
echo "$OWN" | grep -e '-4\|10\.' | grep -E -e '--to-destination|MASQUERADE' | head -n 2 \
    | sed -e 's/ -m comment --comment "[^"]*"//' -e 's/^/               /'

# --- a web server in the container, fetched through the published port ---------------------
mkdir -p "$WORK/www"
echo "hello from the container ($ADDRESSES)" > "$WORK/www/index.html"
ip netns exec "$CTR" python3 -m http.server 80 --bind 0.0.0.0 --directory "$WORK/www" >/dev/null 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do  # until the server listens
    in_host curl -s -o /dev/null --max-time 1 "http://$CTR_V4/" && break
    sleep 0.1
done
fetch() {
    local body
    body=$(in_host curl -sS --max-time 5 "http://$1:$HOST_PORT/") || fail "fetch http://$1:$HOST_PORT/"
    say "fetched" "http://$1:$HOST_PORT/ -> \"$body\""
}
fetch 127.0.0.1
fetch $HOST_ADDR

# --- CHECK, then DEL -------------------------------------------------------------------------
runner check "$NETWORK" "/run/netns/$CTR" || fail "check"
say "check" "ok: the attachment matches the cached result"
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
runner del "$NETWORK" "/run/netns/$CTR" || fail "del"

LEFT=()
[ -n "$(ip -n "$HOST" -o link show type veth | grep -v 'eth0@')" ] && LEFT+=("a host veth")
(in_host iptables-save; in_host ip6tables-save) | grep -q -e '-A .*cni-bridge' && LEFT+=("iptables rules")
ls "$WORK/ipam/$NETWORK" 2>/dev/null | grep -q -v -e '^lock$' -e '^last_reserved_ip' -e '^cni-bridge\.boot$' && LEFT+=("an address reservation")
[ -n "$(ls -A "$WORK/cache/results" 2>/dev/null)" ] && LEFT+=("a cached result")
[ ${#LEFT[@]} -eq 0 ] || fail "del left ${LEFT[*]} behind"
say "del" "ok: no veth, no iptables rule, no reservation, no cached result left"

# --- and the namespaces go ---------------------------------------------------------------------
for ns in "$CTR" "$LAN" "$HOST"; do ip netns delete "$ns"; done
ip netns list | grep -q "^cbdemo-$ID-" && fail "a namespace of the demo is still there"
say "cleaned" "throwaway namespaces removed; the real host's network was never touched"
