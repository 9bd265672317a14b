// A Node `ws` fan-out proxy: one upstream WebSocket, a WebSocketServer, auth by the first
// message, and a plain for-each-client send of every upstream message. A second baseline for
// fxbench, in the shape most Node fan-out servers take.
//
//   node ws_fanout.mjs --upstream ws://127.0.0.1:FEEDPORT --port 8765 --key benchkey-0001

import { parseArgs } from 'node:util';
import { WebSocket, WebSocketServer } from 'ws';

const { values: a } = parseArgs({
  options: {
    upstream: { type: 'string' },
    port: { type: 'string' },
    key: { type: 'string' },
    symbols: { type: 'string', default: 'EURUSD' },
    'api-key': { type: 'string', default: '' },
  },
});
if (!a.upstream || !a.port || !a.key) {
  console.error('usage: node ws_fanout.mjs --upstream URL --port P --key KEY [--symbols A,B]');
  process.exit(2);
}

const clients = new Set();

const wss = new WebSocketServer({ host: '127.0.0.1', port: Number(a.port) });
wss.on('listening', () => console.log(`ws_fanout: listening on 127.0.0.1:${a.port}`));
wss.on('connection', (ws) => {
  const timer = setTimeout(() => ws.close(1008, 'Failed to authenticate'), 10_000);
  ws.on('error', () => {});
  ws.once('message', (data, isBinary) => {
    clearTimeout(timer);
    let key;
    try {
      key = isBinary ? undefined : JSON.parse(data.toString()).userKey;
    } catch {}
    if (typeof key !== 'string') return ws.close(1008, 'Failed to authenticate');
    if (key !== a.key) return ws.close(1008, 'Authentication failed');
    clients.add(ws);
    ws.on('close', () => clients.delete(ws));
  });
});

const up = new WebSocket(a.upstream);
up.on('open', () => up.send(JSON.stringify({ userKey: a['api-key'], symbol: a.symbols })));
up.on('message', (data, isBinary) => {
  for (const c of clients) {
    if (c.readyState === WebSocket.OPEN) c.send(data, { binary: isBinary });
  }
});
up.on('close', () => {
  console.error('ws_fanout: upstream closed');
  process.exit(1);
});
up.on('error', (e) => {
  console.error(`ws_fanout: upstream error: ${e.message}`);
  process.exit(1);
});
