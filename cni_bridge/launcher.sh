#!/bin/sh
# cni-bridge launcher, format 1. Template: `python -m cni_bridge.onefile pack` fills in the @...@
# fields. This shell script is the head of dist/cni-bridge; a tar archive of the one-folder
# bundle follows it. The first start extracts the bundle into the cache, in a directory named
# by the archive's hash; every start then runs the bundle's executable from there with the
# same arguments, environment, stdin and working directory. Why: README, "What the build
# produces, and why".
payload_sha256=@PAYLOAD_SHA256@
payload_offset=@PAYLOAD_OFFSET@
payload_size_mb=@PAYLOAD_SIZE_MB@
cache=${CNI_BRIDGE_CACHE_DIR:-@DEFAULT_CACHE_DIR@}
bundle=$cache/@BUNDLE_NAME@

# PyInstaller's bootloader (one-folder mode, Linux) puts the bundle's libraries on
# LD_LIBRARY_PATH and then execs itself once more, for the dynamic loader to see them. Set
# here what it would set and it goes on at once, in the process this script execs. A start
# from inside this build (the variables already name it) keeps them as they are; where they
# do not match what the bootloader computes (a cache path through a symlink), it restarts
# as before.
run_bundle() {
    [ "$1" = install-cni ] && export CNI_BRIDGE_LAUNCHER="$0"
    if [ "${_PYI_ARCHIVE_FILE-}" != "$bundle/cni-bridge" ]; then
        [ -n "${LD_LIBRARY_PATH-}" ] && export LD_LIBRARY_PATH_ORIG="$LD_LIBRARY_PATH"
        export LD_LIBRARY_PATH="$bundle/_internal${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        export _PYI_ARCHIVE_FILE="$bundle/cni-bridge" _PYI_PARENT_PROCESS_LEVEL=-1
        export _PYI_LINUX_PROCESS_NAME=cni-bridge
    fi
    exec "$bundle/cni-bridge" "$@"
}

# Every start but the first: only complete extractions get this name. The start is recorded
# (an empty file's mtime): prune-bundles keeps what was started recently.
case $cache in /*)
    if [ -x "$bundle/cni-bridge" ]; then
        true 2>/dev/null >"$bundle/.last-start"
        run_bundle "$@"
    fi
esac

# The first start of this build on this host, or a failure.

# A CNI error object on stdout (for a runtime), in the request's cniVersion when stdin has one,
# and a sentence on stderr; then exit 1. Never a shell or tar message alone.
json_text() {
    printf '%s' "$1" | tr '\n\t' '  ' | LC_ALL=C tr -cd ' -~' | sed 's/[\\"]/\\&/g'
}
first_lines() {
    printf '%s\n' "$1" | head -n 3
}
fail() {
    echo "cni-bridge: $2${3:+: $3}" >&2
    if [ -n "$CNI_COMMAND" ]; then
        version=$(tr -d '\n' | sed -n 's/.*"cniVersion"[[:space:]]*:[[:space:]]*"\([0-9.]*\)".*/\1/p')
        printf '{"cniVersion": "%s", "code": %s, "msg": "%s", "details": "%s"}\n' \
            "${version:-1.1.0}" "$1" "$(json_text "$2")" "$(json_text "$3")"
    fi
    exit 1
}
INVALID_ENVIRONMENT=4
IO_FAILURE=5
TRY_AGAIN_LATER=11

case $cache in /*) ;; *)
    fail $INVALID_ENVIRONMENT "CNI_BRIDGE_CACHE_DIR must be an absolute path" "it is \"$cache\""
esac
why=$(mkdir -p -- "$cache" 2>&1) ||
    fail $IO_FAILURE "cannot create the bundle cache $cache" "$why"
why=$( (true >>"$cache/.lock") 2>&1) ||
    fail $IO_FAILURE "cannot create $cache/.lock" "$why"
# One extraction at a time per cache; a start that waited finds the bundle in place.
exec 9>>"$cache/.lock"
flock -w 120 -E 75 9
case $? in
    0) ;;
    75) fail $TRY_AGAIN_LATER "another start has been extracting the bundle into $cache for 2 minutes" ;;
    *) fail $IO_FAILURE "cannot lock $cache/.lock (is flock from util-linux installed?)" ;;
esac

if [ ! -x "$bundle/cni-bridge" ]; then
    # Temp directories left by an extraction that was killed (this start holds the lock).
    rm -rf -- "$cache"/.tmp-*
    sum=$(tail -c +$((payload_offset + 1)) -- "$0" | sha256sum)
    [ "${sum%% *}" = "$payload_sha256" ] ||
        fail $IO_FAILURE "$0 is damaged or incomplete: its bundle does not match its checksum" \
            "copy it again (to a temporary name, then rename it into place)"
    temp=$cache/.tmp-@BUNDLE_NAME@.$$
    # Written in full and synced before it gets its name: after a power cut the extraction
    # is there whole or not at all. One syncfs of the cache's file system rather than an
    # fsync per file: the bundle is ~750 files, and each fsync waited for a journal commit
    # (2.4 s against 0.3 s here). A sync without -f (an older BusyBox) fsyncs each file instead.
    why=$(mkdir -- "$temp" 2>&1 &&
          tail -c +$((payload_offset + 1)) -- "$0" | tar -x -m -f - -C "$temp" 2>&1 &&
          true >"$temp/.last-start" 2>&1 &&
          { sync -f -- "$temp" 2>/dev/null || find "$temp" -exec sync -- {} + 2>&1; }) || {
        rm -rf -- "$temp"
        fail $IO_FAILURE "cannot extract the bundle ($payload_size_mb MB) into $cache" "$(first_lines "$why")"
    }
    # A directory of that name without its executable was damaged by hand: set aside for pruning.
    [ -e "$bundle" ] && mv -T -- "$bundle" "$cache/.old-@BUNDLE_NAME@.$$"
    why=$(mv -T -- "$temp" "$bundle" 2>&1 && sync -- "$cache" 2>&1) || {
        rm -rf -- "$temp"
        fail $IO_FAILURE "cannot put the bundle in place in $cache" "$(first_lines "$why")"
    }
    echo "cni-bridge: extracted the bundle into $bundle (once per build and host)" >&2
    exec 9>&-
    # Extractions of other builds nobody started for a day and no process runs from; when
    # there is nothing but this one (a first install), the Python start is saved.
    for entry in "$cache"/* "$cache"/.old-*; do
        case ${entry##*/} in
            @BUNDLE_NAME@ | "*" | ".old-*") ;;
            *) "$bundle/cni-bridge" prune-bundles "$cache" </dev/null >&2 ||
                   echo "cni-bridge: pruning $cache failed; continuing" >&2
               break ;;
        esac
    done
fi
exec 9>&-
run_bundle "$@"
