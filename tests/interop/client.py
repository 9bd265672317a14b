"""A client written the ordinary way with Python's `websockets` library, run against fxproxy.

usage: python3 client.py WS_URL KEY SYMBOLS
  WS_URL   e.g. ws://127.0.0.1:8765/
  KEY      a valid client key
  SYMBOLS  every symbol the proxy carries, comma-separated (at least two)

Checks: quotes arrive as JSON with symbol/bid/ask and bid < ask, only the requested symbols
when filtered; a ping is answered; a wrong key is closed with 1008 "Authentication failed"
before any quote; a normal close gets 1000 back. And TraderMade's v2 protocol, spoken as
TraderMade's own client speaks it: login_ok, a subscription of SYMBOL:QUOTE answered with a
sub_ack (a bare symbol invalid), ticks with string prices and a compact UTC time, nothing of a
symbol after its unsubscription is acknowledged, login_reject for a wrong key. Exits 0 if all
pass, 1 with a message if not.
"""

import asyncio
import json
import re
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


V2_TIME = re.compile(r"^\d{8}-\d{2}:\d{2}:\d{2}\.\d{3}$")


async def next_json(ws):
    """The next JSON message; plain text (the greeting) is skipped, as TraderMade's client does."""
    while True:
        frame = await ws.recv()
        try:
            return json.loads(frame)
        except ValueError:
            continue


def check_tick(msg, symbol):
    """A v2 tick of `symbol`: string prices, bid below ask, a compact UTC time."""
    if msg.get("t") not in ("QUOTE", "LAST_QUOTE"):
        raise Failed(f"expected a tick, got {msg!r}")
    if msg.get("s") != symbol:
        raise Failed(f"a tick of {msg.get('s')!r}, subscribed to {symbol} only: {msg!r}")
    bid, ask = msg.get("b"), msg.get("a")
    if not (isinstance(bid, str) and isinstance(ask, str)):
        raise Failed(f"prices are not strings: {msg!r}")
    if not float(bid) < float(ask):
        raise Failed(f"bid {bid} is not below ask {ask}: {msg!r}")
    if not (isinstance(msg.get("ts"), str) and V2_TIME.match(msg["ts"])):
        raise Failed(f"ts is not YYYYMMDD-HH:MM:SS.mmm: {msg!r}")


async def v2_session(url, key, all_symbols):
    symbol, other = all_symbols[0], all_symbols[1]
    async with connect(url, open_timeout=STEP_TIMEOUT, close_timeout=STEP_TIMEOUT) as ws:
        async with asyncio.timeout(STEP_TIMEOUT):
            await ws.send(json.dumps({"action": "login", "key": key, "fmt": "JSON"}))
            login = await next_json(ws)
            if login.get("type") != "login_ok" or not isinstance(login.get("symbol_limit"), int):
                raise Failed(f"expected login_ok with a symbol_limit, got {login!r}")
            await ws.send(json.dumps({"action": "subscribe", "symbols": [f"{symbol}:QUOTE", other], "send_last": True}))
            ack = await next_json(ws)
            if ack.get("type") != "sub_ack" or ack.get("accepted") != [f"{symbol}:QUOTE"] or ack.get("invalid") != [other]:
                raise Failed(f"expected a sub_ack accepting {symbol}:QUOTE, {other} (bare) invalid; got {ack!r}")
            for _ in range(QUOTES):
                check_tick(await next_json(ws), symbol)
            await ws.send(json.dumps({"action": "unsubscribe", "symbols": [f"{symbol}:QUOTE"]}))
            while True:
                msg = await next_json(ws)
                if msg.get("type") == "sub_ack":
                    break
                check_tick(msg, symbol)
        # Nothing more of it: the simulator streams every symbol several times a second.
        try:
            async with asyncio.timeout(1):
                msg = await ws.recv()
                raise Failed(f"after the unsubscription was acknowledged: {msg!r}")
        except TimeoutError:
            pass
    async with connect(url, open_timeout=STEP_TIMEOUT) as ws:
        await ws.send(json.dumps({"action": "login", "key": "wrong-" + key, "fmt": "JSON"}))
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                answer = await next_json(ws)
                if answer.get("type") != "login_reject":
                    raise Failed(f"a wrong key got {answer!r}, expected login_reject")
                await ws.recv()
                raise Failed("a wrong key was not closed after login_reject")
        except ConnectionClosed as e:
            if e.rcvd is None or (e.rcvd.code, e.rcvd.reason) != (1008, "Authentication failed"):
                raise Failed(f"a wrong v2 key was closed with {e.rcvd}, expected 1008 'Authentication failed'")
        except TimeoutError:
            raise Failed(f"a wrong v2 key was not answered within {STEP_TIMEOUT} s")


async def main(url, key, all_symbols):
    seen = await session(url, key, None, set(all_symbols))
    print(f"ok - all symbols: {QUOTES} quotes from {sorted(seen)}, ping answered, closed with 1000")
    want = all_symbols[:2]
    seen = await session(url, key, want, set(want))
    print(f"ok - filter {','.join(want)}: {QUOTES} quotes from {sorted(seen)} only")
    await refused(url, "wrong-" + key)
    print("ok - wrong key: 1008 Authentication failed, no quote first")
    await v2_session(url, key, all_symbols)
    print(f"ok - v2: login_ok, sub_ack, {QUOTES} ticks of {all_symbols[0]}, none after unsubscribe, login_reject for a wrong key")
    print("client.py: 4 passed, 0 failed")


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
