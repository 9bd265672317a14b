#!/bin/sh
# Check contrib/fxproxy.service, contrib/fxproxy.socket and the drop-in
# contrib/fxproxy.service.d/notify-reload.conf with systemd's own tools, without a
# running systemd:
#   1. `systemd-analyze verify` must print nothing about the service and the socket
#      (it exits 0 even for unknown keys and unparsable values, so its output is
#      what counts); with systemd 253 or later, nothing about the service with the
#      drop-in either (older systemd does not know Type=notify-reload, which is why
#      it is a drop-in: the check says it skipped it);
#   2. `systemd-analyze security --offline=yes` must rate the service "OK" or better
#      (PERFECT < SAFE < OK < MEDIUM < EXPOSED < UNSAFE < DANGEROUS). Its exit
#      status says nothing about the rating, so the summary line is parsed.
#
# Usage: contrib/check-unit.sh [FXPROXY_BINARY]
#   verify insists that ExecStart's program exists and is executable. The unit is
#   checked from a temporary copy whose ExecStart runs FXPROXY_BINARY (e.g.
#   target/release/fxproxy) or, without one, /bin/true; nothing else changes.
#
# Needs systemd-analyze >= 250 (Debian 12: `apt-get install systemd`). Works in a
# container where systemd is not PID 1: both commands read unit files only.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
unit_src="$here/fxproxy.service"
socket_src="$here/fxproxy.socket"
dropin_src="$here/fxproxy.service.d/notify-reload.conf"
exe=${1:-/bin/true}

fail() { echo "check-unit: FAIL: $*" >&2; exit 1; }

command -v systemd-analyze >/dev/null 2>&1 ||
    fail "systemd-analyze not found (Debian/Ubuntu: apt-get install systemd)"
for f in "$unit_src" "$socket_src" "$dropin_src"; do
    [ -f "$f" ] || fail "$f not found"
done
case $exe in /*) ;; *) exe="$(pwd)/$exe" ;; esac
[ -x "$exe" ] || fail "$exe is not an executable file"

version=$(systemd-analyze --version | sed -n '1s/^systemd \([0-9]*\).*/\1/p')
[ -n "$version" ] && [ "$version" -ge 250 ] ||
    fail "systemd-analyze ${version:-?} is too old: --offline=yes needs 250 or later"

# Plain output whatever the terminal and locale.
export SYSTEMD_COLORS=0 SYSTEMD_PAGER=cat LC_ALL=C

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
unit="$tmp/fxproxy.service"
# Replace only the program path; the arguments stay as shipped.
sed "s|^ExecStart=/usr/local/bin/fxproxy |ExecStart=$exe |" "$unit_src" > "$unit"
grep -q "^ExecStart=$exe " "$unit" ||
    fail "could not find 'ExecStart=/usr/local/bin/fxproxy ' in $unit_src"
cp "$socket_src" "$tmp/fxproxy.socket"

# --- 1. verify --------------------------------------------------------------
# --man=no: no man(1) lookups for Documentation=; --recursive-errors=no: problems
# in the host's own units (network-online.target, multi-user.target) are not ours.
# verify_units WHAT FILE...: `systemd-analyze verify` of the files, which must say
# nothing about them.
verify_units() {
    what=$1
    shift
    echo "== systemd-analyze verify: $what"
    status=0
    systemd-analyze verify --man=no --generators=no --recursive-errors=no "$@" \
        > "$tmp/verify.out" 2>&1 || status=$?
    sed 's/^/   /' "$tmp/verify.out"
    # Any line naming a unit of ours (file:line: message, or "fxproxy.service: ...")
    # is a complaint about one of its directives; other lines are about the host and
    # are shown but not counted.
    if grep -q -e "$tmp" -e 'fxproxy\.s' "$tmp/verify.out"; then
        fail "systemd-analyze verify has warnings about $what (above)"
    fi
    [ "$status" -eq 0 ] || fail "systemd-analyze verify exited with status $status"
    echo "   no warnings"
}
verify_units "fxproxy.service and fxproxy.socket" "$unit" "$tmp/fxproxy.socket"

# The drop-in, read from the unit's own directory as systemd reads drop-ins.
if [ "$version" -ge 253 ]; then
    mkdir "$tmp/fxproxy.service.d"
    cp "$dropin_src" "$tmp/fxproxy.service.d/"
    verify_units "fxproxy.service with fxproxy.service.d/notify-reload.conf" "$unit"
    rm -r "$tmp/fxproxy.service.d"
else
    echo "== fxproxy.service.d/notify-reload.conf: skipped (Type=notify-reload needs systemd 253, this is $version)"
fi

# --- 2. security --------------------------------------------------------------
echo "== systemd-analyze security --offline=yes"
systemd-analyze security --offline=yes "$unit" > "$tmp/security.out" 2>&1 || true
# Show the settings that still cost exposure ("-" in the C locale, "✗" in UTF-8).
grep -E '^(-|✗) ' "$tmp/security.out" | sed 's/^/   /' || true
summary=$(grep 'Overall exposure level' "$tmp/security.out" | tail -n 1)
[ -n "$summary" ] || { cat "$tmp/security.out" >&2; fail "no 'Overall exposure level' line"; }
# The line reads "-> Overall exposure level for fxproxy.service: 1.1 OK :-)".
score=$(printf '%s\n' "$summary" | sed -n 's/.*: *\([0-9][0-9.]*\) \([A-Z][A-Z]*\).*/\1/p')
level=$(printf '%s\n' "$summary" | sed -n 's/.*: *\([0-9][0-9.]*\) \([A-Z][A-Z]*\).*/\2/p')
[ -n "$score" ] && [ -n "$level" ] || fail "cannot parse: $summary"
echo "   exposure: $score $level (0.0 best, 10.0 worst)"
case $level in
    PERFECT|SAFE|OK) ;;
    MEDIUM|EXPOSED|UNSAFE|DANGEROUS) fail "exposure level $level ($score) is worse than OK" ;;
    *) fail "unknown exposure level '$level' in: $summary" ;;
esac
echo "check-unit: OK"
