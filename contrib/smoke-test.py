#!/usr/bin/env python3
"""Smoke test of one fxproxy binary, native or under an emulator such as qemu-user.

usage: contrib/smoke-test.py [--runner CMD] [--clients N] BINARY
  --runner CMD  run BINARY (the proxy and every `watch`) through CMD, e.g. qemu-aarch64
  --clients N   `fxproxy watch` clients to start (default 4)

What it proves, using only the documented contract (shared protocol.md, the README and docs/): the
proxy starts with `upstream_url = sim` on `listen = 127.0.0.1:0` and logs
`listening on 127.0.0.1:PORT`; `/healthz` answers 200; N `fxproxy watch URL --key KEY`
clients (the same binary) and a Python `websockets` client receive quotes; on SIGTERM the
Python client gets close code 1001, every watch client ends, and the proxy exits 0.

Every wait is a poll with a deadline, never a fixed sleep. Exits 0 when all of it holds,
1 with the reason and the processes' output when not. Needs Python 3.8+ and websockets >= 11
(pip install -r tests/interop/requirements.txt).
"""

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

KEY = "smoke-test-key-0001"
SYMBOLS = ["EURUSD", "GBPUSD", "USDJPY"]
# Generous: under emulation a start-up takes seconds, not milliseconds.
START_DEADLINE = 60.0
QUOTE_DEADLINE = 60.0
STOP_DEADLINE = 20.0
QUOTES_PER_CLIENT = 3
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)\b")


class Failed(Exception):
    pass


class Child:
    """A process whose stdout and stderr lines are collected by two reader threads."""

    def __init__(self, name, argv):
        self.name = name
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self.out, self.err = [], []
        self.changed = threading.Condition()
        self.readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for r in self.readers:
            r.start()

    def _read(self, stream, lines):
        for line in stream:
            with self.changed:
                lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, what, predicate, deadline):
        """Waits until predicate() (called under the lock) is true, or fails at the deadline."""
        with self.changed:
            while True:
                result = predicate()
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Failed(f"{self.name}: {what} not seen in time")
                if self.proc.poll() is not None and not any(r.is_alive() for r in self.readers):
                    raise Failed(f"{self.name}: exited with {self.proc.returncode} before {what}")
                self.changed.wait(min(left, 0.5))

    def exit_code(self, deadline):
        try:
            code = self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise Failed(f"{self.name}: still running at the deadline") from None
        for r in self.readers:
            r.join(timeout=5)
        return code

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self):
        """Kills the process if it still runs and releases its pipes."""
        self.kill()
        for r in self.readers:
            r.join(timeout=5)
        self.proc.stdout.close()
        self.proc.stderr.close()

    def dump(self):
        with self.changed:
            tail = [f"  err| {l}" for l in self.err[-25:]] + [f"  out| {l}" for l in self.out[-5:]]
        return f"--- {self.name}: {shlex.join(self.argv)} (exit {self.proc.poll()})\n" + "\n".join(tail)


def healthz(port, deadline):
    """Polls GET /healthz until it answers 200."""
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                if r.status == 200:
                    return
                last = f"HTTP {r.status}"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"  # e.g. 503 while the simulated upstream connects
        except OSError as e:
            last = str(e)
        time.sleep(0.2)  # poll interval, not synchronisation: the deadline bounds the wait
    raise Failed(f"/healthz never answered 200 (last: {last})")


def check_quote(frame):
    try:
        q = json.loads(frame)
    except (TypeError, ValueError):
        raise Failed(f"python client: frame is not JSON: {frame!r}") from None
    if not isinstance(q, dict) or q.get("symbol") not in SYMBOLS:
        raise Failed(f"python client: not a quote of {SYMBOLS}: {frame!r}")
    bid, ask = q.get("bid"), q.get("ask")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (bid, ask)):
        raise Failed(f"python client: bid/ask are not numbers: {frame!r}")


def recv(ws, deadline):
    try:
        return ws.recv(timeout=max(0.01, deadline - time.monotonic()))
    except TimeoutError:
        raise Failed("python client: no frame before the deadline") from None


def write_config(tmp):
    keys = os.path.join(tmp, "users.keys")
    conf = os.path.join(tmp, "proxy.conf")
    with open(keys, "w") as f:
        f.write(KEY + "\n")
    with open(conf, "w") as f:
        f.write(
            "listen = 127.0.0.1:0\n"
            "upstream_url = sim\n"
            f"symbols = {','.join(SYMBOLS)}\n"
            f"user_keys_file = {keys}\n"
        )
    return conf


def run(binary, runner, clients, tmp):
    started = time.monotonic()
    children = []
    try:
        proxy = Child("proxy", runner + [binary, "--config", write_config(tmp)])
        children.append(proxy)

        def port_logged():
            for line in proxy.err:
                m = LISTENING.search(line)
                if m:
                    return int(m.group(1))
            return None

        port = proxy.wait_for(
            "`listening on 127.0.0.1:PORT`", port_logged, time.monotonic() + START_DEADLINE
        )
        listening_after = time.monotonic() - started
        healthz(port, time.monotonic() + START_DEADLINE)
        url = f"ws://127.0.0.1:{port}/"

        watches = [
            Child(f"watch-{i}", runner + [binary, "watch", url, "--key", KEY])
            for i in range(clients)
        ]
        children += watches

        with connect(url, open_timeout=START_DEADLINE, close_timeout=STOP_DEADLINE) as ws:
            ws.send(json.dumps({"userKey": KEY}))
            deadline = time.monotonic() + QUOTE_DEADLINE
            got = 0
            while got < QUOTES_PER_CLIENT:
                frame = recv(ws, deadline)
                if frame != "Connected":  # the greeting the proxy may send
                    check_quote(frame)
                    got += 1

            deadline = time.monotonic() + QUOTE_DEADLINE
            for w in watches:
                w.wait_for(
                    f"{QUOTES_PER_CLIENT} quote lines",
                    lambda w=w: sum(any(s in l for s in SYMBOLS) for l in w.out)
                    >= QUOTES_PER_CLIENT,
                    deadline,
                )
            quoted_after = time.monotonic() - started

            proxy.proc.send_signal(signal.SIGTERM)
            stop_deadline = time.monotonic() + STOP_DEADLINE
            try:
                while True:
                    recv(ws, stop_deadline)  # quotes still in flight, then the close
            except ConnectionClosed as e:
                code = e.rcvd.code if e.rcvd is not None else None
                if code != 1001:
                    raise Failed(f"python client: closed with {code}, expected 1001") from None

        code = proxy.exit_code(stop_deadline)
        if code != 0:
            raise Failed(f"proxy: exit code {code} after SIGTERM, expected 0")
        for w in watches:
            w.exit_code(stop_deadline)  # ends once its connection is closed
        stopped_after = time.monotonic() - started
    except (Failed, OSError) as e:
        for c in children:
            c.kill()
        for c in children:
            print(c.dump(), file=sys.stderr)
        raise Failed(str(e)) from None
    finally:
        for c in children:
            c.close()
    lines = sum(len(w.out) for w in watches)
    print(
        f"smoke test passed: {shlex.join(runner + [binary])}: listening after "
        f"{listening_after:.1f} s, /healthz 200, {clients} watch clients ({lines} quote lines) "
        f"and a Python client received quotes by {quoted_after:.1f} s; SIGTERM: close 1001, "
        f"exit 0, all clients ended by {stopped_after:.1f} s"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runner", default="", help="emulator to run the binary with, e.g. qemu-arm")
    p.add_argument("--clients", type=int, default=4, help="fxproxy watch clients (default 4)")
    p.add_argument("binary")
    args = p.parse_args()
    try:
        with tempfile.TemporaryDirectory(prefix="fxproxy-smoke-") as tmp:
            run(os.path.abspath(args.binary), shlex.split(args.runner), args.clients, tmp)
    except Failed as e:
        print(f"smoke test FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
