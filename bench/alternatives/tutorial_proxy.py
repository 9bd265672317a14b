"""A WebSocket fan-out proxy written the way the well-known Python tutorial does it.

One upstream connection (websockets.connect) sends the subscribe message; clients connect to a
websockets.serve handler that checks {"userKey": ...} and adds them to a set; every upstream
message is sent to every client with asyncio.gather. This is the baseline fxbench compares
fxproxy against, so it is deliberately the plain tutorial shape, not a tuned design. The only
departure: gather(..., return_exceptions=True), since without it the first client that goes
away mid-send kills the upstream loop and there would be nothing left to measure.

    python tutorial_proxy.py --upstream ws://127.0.0.1:FEEDPORT --port 8765 --key benchkey-0001
"""

import argparse
import asyncio
import json

import websockets

clients = set()


async def handler(websocket, key):
    try:
        data = json.loads(await asyncio.wait_for(websocket.recv(), timeout=10))
        user_key = data.get("userKey") if isinstance(data, dict) else None
    except Exception:
        user_key = None
    if not isinstance(user_key, str):
        await websocket.close(1008, "Failed to authenticate")
        return
    if user_key != key:
        await websocket.close(1008, "Authentication failed")
        return
    clients.add(websocket)
    try:
        await websocket.wait_closed()
    finally:
        clients.discard(websocket)


async def upstream(url, symbols, api_key):
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"userKey": api_key, "symbol": symbols}))
        async for msg in ws:
            if clients:
                await asyncio.gather(*[c.send(msg) for c in clients], return_exceptions=True)


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", required=True, help="ws:// URL of the quote source")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--key", required=True, help="the one client key accepted")
    p.add_argument("--symbols", default="EURUSD")
    p.add_argument("--api-key", default="", help="key sent upstream")
    a = p.parse_args()
    async with websockets.serve(lambda ws: handler(ws, a.key), "127.0.0.1", a.port):
        print(f"tutorial_proxy: listening on 127.0.0.1:{a.port}", flush=True)
        await upstream(a.upstream, a.symbols, a.api_key)


if __name__ == "__main__":
    asyncio.run(main())
