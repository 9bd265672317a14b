#!/usr/bin/env bash
# Installs fxproxy's .deb for this host (made by contrib/package.sh) on this Debian machine
# and checks that the installed service serves the built-in simulated source, then purges it:
#   1. the package's contents: the binary in /usr/bin, the units in /lib/systemd/system, the
#      sysusers.d file, /etc/fxproxy/proxy.conf and users.keys as conffiles;
#   2. `dpkg -i`: the system user fxproxy exists (not root, no login), /etc/fxproxy is
#      root:fxproxy 0750 with the conffiles 0640, the credential file upstream_api_key
#      root-only; `systemd-analyze verify` says nothing about the installed units (as
#      contrib/check-unit.sh checks the shipped ones);
#   3. the installed binary started the way the installed unit starts it, without systemd as
#      PID 1: ExecStart= and WorkingDirectory= read from the unit, run as the user fxproxy,
#      with the listening socket passed as fxproxy.socket would (descriptor 3, LISTEN_FDS=1,
#      LISTEN_PID; here on a free loopback port rather than the unit's 8765, so that the
#      check never meets something already there) and NOTIFY_SOCKET read by the check: it
#      says READY=1, `fxproxy watch` with the demo key prints quotes from it, and SIGTERM
#      brings STOPPING=1 and exit 0;
#   4. `dpkg --purge`: the binary, the units and /etc/fxproxy are gone.
#
# usage: contrib/check-package.sh DEB     e.g. target/package/fxproxy_0.1.0-1_amd64.deb
# Needs root, dpkg, setpriv (util-linux), systemd-analyze (Debian: systemd) and python3.
# Refuses to run where fxproxy is installed already: it would replace and then purge it.
set -euo pipefail

fail() { echo "check-package: FAIL: $*" >&2; exit 1; }
[ $# -eq 1 ] || fail "usage: $0 DEB"
deb=$(realpath "$1")
[ -f "$deb" ] || fail "$deb not found"
[ "$(id -u)" = 0 ] || fail "needs root (it installs the package)"
for c in dpkg setpriv systemd-analyze python3; do
  command -v "$c" >/dev/null || fail "$c not found"
done
if dpkg-query -W -f='${Status}' fxproxy 2>/dev/null | grep -q 'install ok installed'; then
  fail "fxproxy is installed on this host already; not replacing it (dpkg --purge fxproxy first)"
fi
export SYSTEMD_COLORS=0 SYSTEMD_PAGER=cat LC_ALL=C

tmp=$(mktemp -d)
installed=0
cleanup() {
  [ $installed = 0 ] || dpkg --purge fxproxy >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

echo "== contents of $(basename "$deb")"
dpkg-deb --contents "$deb" >"$tmp/contents"
for path in ./usr/bin/fxproxy ./lib/systemd/system/fxproxy.service ./lib/systemd/system/fxproxy.socket \
  ./usr/lib/sysusers.d/fxproxy.conf ./etc/fxproxy/proxy.conf ./etc/fxproxy/users.keys \
  ./usr/share/doc/fxproxy/copyright; do
  grep -q " $path\$" "$tmp/contents" || fail "$path is not in the package"
done
dpkg-deb --ctrl-tarfile "$deb" | tar -xOf - ./conffiles >"$tmp/conffiles"
grep -qx /etc/fxproxy/proxy.conf "$tmp/conffiles" || fail "/etc/fxproxy/proxy.conf is not a conffile"
grep -qx /etc/fxproxy/users.keys "$tmp/conffiles" || fail "/etc/fxproxy/users.keys is not a conffile"
! grep -v ' root/root ' "$tmp/contents" | grep -q . || fail "files not owned by root in the package"
echo "   binary, units, sysusers.d, conffiles: OK"

echo "== dpkg -i"
installed=1
dpkg -i "$deb" >"$tmp/dpkg.out" 2>&1 || { cat "$tmp/dpkg.out" >&2; fail "dpkg -i failed"; }
/usr/bin/fxproxy --version
IFS=: read -r _ _ uid gid _ home shell < <(getent passwd fxproxy) || fail "no user fxproxy"
[ "$uid" -gt 0 ] && [ "$uid" -lt 1000 ] || fail "fxproxy has uid $uid, not a system uid"
case $shell in */nologin | */false) ;; *) fail "fxproxy has the login shell $shell" ;; esac
[ "$(getent group fxproxy | cut -d: -f3)" = "$gid" ] || fail "fxproxy's group is not fxproxy"
[ "$(stat -c '%U:%G %a' /etc/fxproxy)" = "root:fxproxy 750" ] ||
  fail "/etc/fxproxy is $(stat -c '%U:%G %a' /etc/fxproxy)"
for f in proxy.conf users.keys; do
  [ "$(stat -c '%U:%G %a' /etc/fxproxy/$f)" = "root:fxproxy 640" ] ||
    fail "/etc/fxproxy/$f is $(stat -c '%U:%G %a' /etc/fxproxy/$f)"
done
[ "$(stat -c '%U:%G %a' /etc/fxproxy/upstream_api_key)" = "root:root 600" ] ||
  fail "/etc/fxproxy/upstream_api_key is $(stat -c '%U:%G %a' /etc/fxproxy/upstream_api_key)"
echo "   user fxproxy (uid $uid, $shell, home $home), /etc/fxproxy root:fxproxy: OK"

echo "== systemd-analyze verify of the installed units"
systemd-analyze verify --man=no --generators=no --recursive-errors=no \
  /lib/systemd/system/fxproxy.service /lib/systemd/system/fxproxy.socket >"$tmp/verify.out" 2>&1 || true
sed 's/^/   /' "$tmp/verify.out"
! grep -q 'fxproxy\.s' "$tmp/verify.out" || fail "systemd-analyze verify has warnings about the installed units"
echo "   no warnings"

echo "== the installed service, started as its unit starts it (user fxproxy, socket activation)"
exec_start=$(sed -n 's/^ExecStart=//p' /lib/systemd/system/fxproxy.service)
workdir=$(sed -n 's/^WorkingDirectory=//p' /lib/systemd/system/fxproxy.service)
[ -n "$exec_start" ] && [ -n "$workdir" ] || fail "no ExecStart= or WorkingDirectory= in the installed unit"
[[ $exec_start == /usr/bin/fxproxy\ * ]] || fail "the installed unit runs $exec_start"
setpriv --reuid=fxproxy --regid=fxproxy --init-groups sh -c "cd $workdir && exec $exec_start --check-config" ||
  fail "the installed configuration does not check as the user fxproxy"
chmod 0755 "$tmp"
if python3 - "$tmp" "$workdir" $exec_start <<'EOF'
import os, re, signal, socket, subprocess, sys, time

tmp, workdir, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
deadline = lambda s: time.monotonic() + s

# systemd's side: the notify socket, and the listening socket fxproxy.socket would hold.
notify_path = os.path.join(tmp, "notify.sock")
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.bind(notify_path)
os.chmod(notify_path, 0o777)
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.bind(("127.0.0.1", 0))
listener.listen(4096)
port = listener.getsockname()[1]

# As the unit: user fxproxy (and its groups), in WorkingDirectory=, the socket as descriptor
# 3 with LISTEN_FDS=1 and LISTEN_PID the proxy's own pid ($$ of the shell that execs it).
env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NOTIFY_SOCKET": notify_path}
wrapper = 'exec 3<&0 0</dev/null; export LISTEN_PID=$$ LISTEN_FDS=1; exec "$@"'
proxy = subprocess.Popen(
    ["setpriv", "--reuid=fxproxy", "--regid=fxproxy", "--init-groups", "sh", "-c", wrapper, "sh"] + argv,
    stdin=listener.fileno(), stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "proxy.log"), "w"),
    cwd=workdir, env=env)

# Whatever happens below, the proxy this check started does not outlive it.
import atexit
atexit.register(lambda: proxy.poll() is None and proxy.kill())

def log():
    return open(os.path.join(tmp, "proxy.log")).read()

def fail(why):
    proxy.kill()
    sys.exit(f"{why}\n--- the proxy's log ---\n{log()}")

def wait_notify(line, within):
    notify.settimeout(0.2)
    until = deadline(within)
    while time.monotonic() < until:
        try:
            msg = notify.recv(4096).decode()
        except socket.timeout:
            if proxy.poll() is not None:
                fail(f"the proxy exited ({proxy.returncode}) before {line}")
            continue
        print("   notify: " + msg.replace("\n", " | "))
        if line in msg.splitlines():
            return msg
    fail(f"no {line} within {within} s")

wait_notify("READY=1", 30)
with open(f"/proc/{proxy.pid}/status") as f:
    uid = next(l.split()[1] for l in f if l.startswith("Uid:"))
import pwd
if int(uid) != pwd.getpwnam("fxproxy").pw_uid:
    fail(f"the proxy runs as uid {uid}, not fxproxy")
if "on the socket systemd passed" not in log():
    fail("the proxy did not say it serves on the socket it was given")

# A client with the shipped demo key, the installed binary's own terminal client; its lines
# are read by a thread, so that every wait here has a deadline.
import threading
watch = subprocess.Popen([argv[0], "watch", f"ws://127.0.0.1:{port}/", "--key", "demo-key-change-me"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
atexit.register(lambda: watch.poll() is None and watch.kill())
lines = []
threading.Thread(target=lambda: lines.extend(watch.stdout), daemon=True).start()
quotes = []
until = deadline(30)
while time.monotonic() < until and len(quotes) < 3 and watch.poll() is None:
    quotes = [l for l in list(lines) if re.match(r"^[A-Z]{6}\s+bid\s", l)]
    time.sleep(0.1)
buf = "".join(lines)
watch.send_signal(signal.SIGINT)
watch.wait(10)
if len(quotes) < 3:
    fail(f"fxproxy watch printed no quotes: {buf!r}")
print(f"   fxproxy watch ws://127.0.0.1:{port}/: {quotes[0].rstrip()}")

proxy.send_signal(signal.SIGTERM)
wait_notify("STOPPING=1", 20)
try:
    code = proxy.wait(20)
except subprocess.TimeoutExpired:
    fail("the proxy did not exit within 20 s of SIGTERM")
if code != 0:
    fail(f"the proxy exited {code} on SIGTERM")
print("   READY=1, quotes, STOPPING=1, exit 0 on SIGTERM: OK")
EOF
then :; else fail "the installed service, run as its unit runs it, did not serve (above)"; fi

echo "== dpkg --purge"
dpkg --purge fxproxy >"$tmp/dpkg.out" 2>&1 || { cat "$tmp/dpkg.out" >&2; fail "dpkg --purge failed"; }
installed=0
for path in /usr/bin/fxproxy /lib/systemd/system/fxproxy.service /lib/systemd/system/fxproxy.socket /etc/fxproxy; do
  [ ! -e "$path" ] || fail "$path is still there after the purge"
done
echo "   binary, units and /etc/fxproxy removed"
echo "check-package: OK"
