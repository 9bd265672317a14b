"""A client written the ordinary way with Python's `websockets` library, run against fxproxy.

usage: python3 client.py WS_URL KEY SYMBOLS
  WS_URL   e.g. ws://127.0.0.1:8765/
  KEY      a valid client key
  SYMBOLS  every symbol the proxy carries, comma-separated (at least two)

Checks: quotes arrive as JSON with symbol/bid/ask and bid < ask, only the requested symbols
when filtered; a ping is answered; a wrong key is closed with 1008 "Authentication failed"
before any quote; a normal close gets 1000 back. Exits 0 if all pass, 1 with a message if not.
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

STEP_TIMEOUT = 10  # seconds for any one step
QUOTES = 20  # quotes to check per session


class Failed(Exception):
    pass


def check_quote(frame, allowed):
    """The quote in `frame`, or Failed saying what is wrong with it."""
    if not isinstance(frame, str):
        raise Failed(f"binary frame {frame!r}, expected JSON text")
    try:
        q = json.loads(frame)
    except ValueError:
        raise Failed(f"frame is not JSON: {frame!r}")
    if not isinstance(q, dict) or not isinstance(q.get("symbol"), str):
        raise Failed(f"frame is not a quote with a string symbol: {frame!r}")
    if q["symbol"] not in allowed:
        raise Failed(f"got {q['symbol']}, expected only {sorted(allowed)}: {frame!r}")
    bid, ask = q.get("bid"), q.get("ask")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (bid, ask)):
        raise Failed(f"bid/ask are not numbers: {frame!r}")
    if not bid < ask:
        raise Failed(f"bid {bid} is not below ask {ask}: {frame!r}")
    return q


async def first_frame_or_greeting(ws):
    """The first frame after the greeting `Connected`, which the proxy may send."""
    frame = await ws.recv()
    return await ws.recv() if frame == "Connected" else frame


async def session(url, key, symbols, allowed):
    """Authenticates, checks quotes and a ping, closes cleanly; returns the symbols seen."""
    async with connect(url, open_timeout=STEP_TIMEOUT, close_timeout=STEP_TIMEOUT) as ws:
        auth = {"userKey": key}
        if symbols:
            auth["symbol"] = ",".join(symbols)
        await ws.send(json.dumps(auth))
        seen = set()
        async with asyncio.timeout(STEP_TIMEOUT):
            seen.add(check_quote(await first_frame_or_greeting(ws), allowed)["symbol"])
            for _ in range(QUOTES - 1):
                seen.add(check_quote(await ws.recv(), allowed)["symbol"])

        # Quotes keep coming while the ping is out; read them so the library's bounded
        # receive queue never pauses the socket before the pong is read.
        async def keep_reading():
            async for frame in ws:
                check_quote(frame, allowed)

        reader = asyncio.create_task(keep_reading())
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                pong = await ws.ping(b"interop")
                await pong
        except TimeoutError:
            raise Failed(f"no pong within {STEP_TIMEOUT} s")
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                await ws.close()
                await reader
        except TimeoutError:
            raise Failed(f"the close handshake did not finish within {STEP_TIMEOUT} s")
        if ws.close_code != 1000:
            raise Failed(f"after our close the proxy answered with code {ws.close_code}, expected 1000")
    return seen


async def refused(url, key):
    async with connect(url, open_timeout=STEP_TIMEOUT) as ws:
        await ws.send(json.dumps({"userKey": key}))
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                first = True
                while True:
                    frame = await ws.recv()
                    if not (first and frame == "Connected"):
                        raise Failed(f"a wrong key received {frame!r} before the refusal")
                    first = False
        except TimeoutError:
            raise Failed(f"a wrong key was not closed within {STEP_TIMEOUT} s")
        except ConnectionClosed as e:
            rcvd = e.rcvd
            if rcvd is None:
                raise Failed("a wrong key's connection ended without a close frame")
            if (rcvd.code, rcvd.reason) != (1008, "Authentication failed"):
                raise Failed(f"a wrong key was closed with {rcvd.code} {rcvd.reason!r}, expected 1008 'Authentication failed'")


async def main(url, key, all_symbols):
    seen = await session(url, key, None, set(all_symbols))
    print(f"ok - all symbols: {QUOTES} quotes from {sorted(seen)}, ping answered, closed with 1000")
    want = all_symbols[:2]
    seen = await session(url, key, want, set(want))
    print(f"ok - filter {','.join(want)}: {QUOTES} quotes from {sorted(seen)} only")
    await refused(url, "wrong-" + key)
    print("ok - wrong key: 1008 Authentication failed, no quote first")
    print("client.py: 3 passed, 0 failed")


if __name__ == "__main__":
    if len(sys.argv) != 4 or len(sys.argv[3].split(",")) < 2:
        sys.exit(__doc__)
    url, key, symbols = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    try:
        asyncio.run(main(url, key, symbols))
    except Failed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    except (OSError, ConnectionClosed, asyncio.TimeoutError) as e:
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
