#!/usr/bin/env bash
# Checks the service files for hosts without systemd (contrib/check-unit.sh checks the systemd
# unit):
#   1. contrib/busybox/S50fxproxy, run for real by BusyBox's sh with BusyBox's start-stop-daemon
#      and logger: `start` brings the proxy up as an unprivileged user and /healthz answers 200,
#      `status` says running, `stop` ends it (SIGTERM), `status` then says stopped (exit 3);
#      a bad configuration makes `start` fail without starting anything.
#   2. the line in contrib/busybox/inittab, run as BusyBox init would (sh -c): the proxy comes
#      up as that user, and on SIGTERM it exits and the line ends.
#   3. contrib/openrc/fxproxy: POSIX sh syntax only (`sh -n`); no OpenRC here to run it.
#
# usage: contrib/check-init-scripts.sh BINARY     e.g. the static x86_64 build
# Needs root (to switch user), busybox (Debian: apt-get install busybox) and python3.
# The proxy listens on 127.0.0.1:0; its port is read from /proc, and every wait has a deadline.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
fail() { echo "check-init-scripts: FAIL: $*" >&2; exit 1; }

[ $# -eq 1 ] || fail "usage: $0 BINARY"
[ -x "$1" ] || fail "$1 is not an executable"
[ "$(id -u)" = 0 ] || fail "needs root (start-stop-daemon -c switches to an unprivileged user)"
command -v busybox >/dev/null || fail "busybox not found (Debian: apt-get install busybox)"
sh -n "$here/openrc/fxproxy" || fail "contrib/openrc/fxproxy: syntax error"
sh -n "$here/busybox/S50fxproxy" || fail "contrib/busybox/S50fxproxy: syntax error"
echo "== sh -n: contrib/openrc/fxproxy and contrib/busybox/S50fxproxy parse"

user=nobody
tmp=$(mktemp -d)
chmod 0755 "$tmp"
# The processes running this check's own copy of the binary: only what the check started.
copies() {
  local exe
  for exe in /proc/[0-9]*/exe; do
    [ "$(readlink "$exe" 2>/dev/null)" != "$tmp/fxproxy" ] || basename "$(dirname "$exe")"
  done
}
cleanup() {
  local pid
  for pid in $(copies); do kill -TERM "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

# A BusyBox userland: the applets the scripts use, first on PATH.
mkdir "$tmp/bin"
for applet in sh start-stop-daemon logger sleep cat rm printf echo; do
  ln -s "$(command -v busybox)" "$tmp/bin/$applet"
done
export PATH="$tmp/bin:$PATH"

install -m 0755 "$1" "$tmp/fxproxy"
printf 'check-init-key-0001\n' >"$tmp/users.keys"
cat >"$tmp/proxy.conf" <<EOF
listen = 127.0.0.1:0
upstream_url = sim
symbols = EURUSD,GBPUSD
user_keys_file = $tmp/users.keys
EOF
printf 'upstream_url = sim\nsymbols = EURUSD\nuser_keys_file = %s/users.keys\nlisten = nowhere\n' \
  "$tmp" >"$tmp/bad.conf"
chmod 0644 "$tmp"/*.conf "$tmp/users.keys"

# probe up|down: waits (deadline 20 s) until the copy of the binary runs as $user and answers
# GET /healthz with 200 on its listening port, or until no such process is left.
probe() {
  python3 - "$1" "$tmp/fxproxy" "$user" <<'EOF'
import os, pwd, sys, time, urllib.request
want, exe, user = sys.argv[1], sys.argv[2], pwd.getpwnam(sys.argv[3]).pw_uid

def procs():
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/exe") == exe:
                yield int(pid)
        except OSError:
            pass

def listening_ports(pid):
    """Its loopback listening ports: the proxy's, and the built-in simulated source's."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and f[9] in inodes and f[1].startswith("0100007F:"):
            yield int(f[1].split(":")[1], 16)

deadline = time.monotonic() + 20
last = "no process"
while time.monotonic() < deadline:
    pids = list(procs())
    if want == "down" and not pids:
        sys.exit(0)
    if want == "up" and len(pids) == 1:
        pid = pids[0]
        try:
            uid = os.stat(f"/proc/{pid}").st_uid
            if uid != user:
                sys.exit(f"fxproxy runs as uid {uid}, not {sys.argv[3]}")
            for port in listening_ports(pid):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                        if r.status == 200:
                            print(f"   pid {pid}, user {sys.argv[3]}, /healthz on port {port}: 200")
                            sys.exit(0)
                        last = f"HTTP {r.status}"
                except OSError as e:
                    last = str(e)  # the simulated source's port, or a 503 while it connects
        except OSError as e:
            last = str(e)  # the process is starting or has just gone
    time.sleep(0.1)  # a poll interval, bounded by the deadline
sys.exit(f"not {want} after 20 s: {last}, processes {list(procs())}")
EOF
}

script=(busybox sh "$here/busybox/S50fxproxy")
env_s50=(FXPROXY_BIN="$tmp/fxproxy" FXPROXY_CONFIG="$tmp/proxy.conf" FXPROXY_USER="$user"
  FXPROXY_PIDFILE="$tmp/fxproxy.pid")

echo "== contrib/busybox/S50fxproxy under BusyBox"
env "${env_s50[@]}" FXPROXY_CONFIG="$tmp/bad.conf" "${script[@]}" start >"$tmp/out" 2>&1 &&
  fail "start with a bad configuration succeeded: $(cat "$tmp/out")"
grep -q 'listen' "$tmp/out" || fail "start with a bad configuration did not name the key: $(cat "$tmp/out")"
probe down || fail "start with a bad configuration left a process"
echo "   a bad configuration: start fails, naming the key, and starts nothing"
env "${env_s50[@]}" "${script[@]}" start
probe up || fail "S50fxproxy start did not bring the proxy up"
env "${env_s50[@]}" "${script[@]}" status | grep -q 'is running' || fail "status does not say running"
env "${env_s50[@]}" "${script[@]}" stop
probe down || fail "S50fxproxy stop did not end the proxy"
status=0
env "${env_s50[@]}" "${script[@]}" status >/dev/null || status=$?
[ $status -eq 3 ] || fail "status of a stopped proxy exited $status, expected 3"
echo "   start, status, stop, status: OK"

echo "== contrib/busybox/inittab, run as BusyBox init runs it"
line=$(sed -n 's/^::respawn://p' "$here/busybox/inittab")
[ -n "$line" ] || fail "no ::respawn: line in contrib/busybox/inittab"
line=${line//\/usr\/local\/bin\/fxproxy/$tmp\/fxproxy}
line=${line//\/etc\/fxproxy\/proxy.conf/$tmp\/proxy.conf}
line=${line//-c fxproxy/-c $user}
[[ $line == *"$tmp/fxproxy"* && $line == *"$tmp/proxy.conf"* && $line == *"-c $user"* ]] ||
  fail "the inittab line no longer has the expected paths and user: $line"
busybox sh -c "exec $line" &
line_pid=$!
probe up || fail "the inittab line did not bring the proxy up"
for pid in $(copies); do kill -TERM "$pid"; done
probe down || fail "the proxy did not exit on SIGTERM"
for _ in $(seq 100); do kill -0 $line_pid 2>/dev/null || break; sleep 0.1; done
kill -0 $line_pid 2>/dev/null && fail "the inittab line did not end after the proxy exited"
wait $line_pid || true
echo "   up as $user, SIGTERM ends the proxy and the line: OK"
echo "check-init-scripts: OK"
