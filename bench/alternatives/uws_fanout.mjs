// A uWebSockets fan-out proxy: uWS pub/sub, the shape its own examples take and the one a user
// choosing uWS for speed would write. Each client that authenticates is subscribed to one topic;
// every quote frame from the upstream is handed to `app.publish` once, verbatim, and uWS's C++
// core writes it to every subscriber (no per-client JavaScript).
//
// uWS comes from the npm package `uwebsockets` (pinned in package.json): a republication of the
// uWebSockets.js binaries (C++ core, one .node per Node ABI; `source_commit` in the package names
// the uWebSockets.js commit). uWS has no WebSocket client, so the upstream connection uses `ws`.
// Greeting and auth as in ws_fanout.mjs: no greeting, the first message must be
// {"userKey": KEY}, else close 1008 after at most 10 s.
//
// uWS also has SSLApp (wss:// in the same C++ core) for a later TLS comparison; not used here.
//
//   node uws_fanout.mjs --upstream ws://127.0.0.1:FEEDPORT --port 8765 --key benchkey-0001

import { parseArgs } from 'node:util';
import uWS from 'uwebsockets';
import { WebSocket } from 'ws';

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
  console.error('usage: node uws_fanout.mjs --upstream URL --port P --key KEY [--symbols A,B]');
  process.exit(2);
}

const TOPIC = 'quotes';
const decoder = new TextDecoder();

const app = uWS.App().ws('/*', {
  compression: uWS.DISABLED,
  maxPayloadLength: 16 * 1024,
  // A subscriber more than this far behind is skipped by publish until it catches up: about
  // the 1,024 quotes that fxproxy's default client_queue_len holds.
  maxBackpressure: 128 * 1024,
  idleTimeout: 120,
  open: (ws) => {
    const d = ws.getUserData();
    d.authed = false;
    d.closed = false;
    d.timer = setTimeout(() => {
      if (!d.closed) ws.end(1008, 'Failed to authenticate');
    }, 10_000);
  },
  message: (ws, message, isBinary) => {
    const d = ws.getUserData();
    if (d.authed) return;
    clearTimeout(d.timer);
    let key;
    try {
      // The ArrayBuffer is only valid during this call; decode copies it out.
      key = isBinary ? undefined : JSON.parse(decoder.decode(message)).userKey;
    } catch {}
    if (typeof key !== 'string') return ws.end(1008, 'Failed to authenticate');
    if (key !== a.key) return ws.end(1008, 'Authentication failed');
    d.authed = true;
    ws.subscribe(TOPIC);
  },
  close: (ws) => {
    const d = ws.getUserData();
    d.closed = true;
    clearTimeout(d.timer);
  },
});

app.listen('127.0.0.1', Number(a.port), (listenSocket) => {
  if (!listenSocket) {
    console.error(`uws_fanout: cannot listen on 127.0.0.1:${a.port}`);
    process.exit(1);
  }
  console.log(`uws_fanout: listening on 127.0.0.1:${a.port}`);
});

const up = new WebSocket(a.upstream);
up.on('open', () => up.send(JSON.stringify({ userKey: a['api-key'], symbol: a.symbols })));
up.on('message', (data, isBinary) => {
  // Quotes are JSON objects; the upstream's `Connected` greeting is not one.
  if (!isBinary && data[0] === 0x7b) app.publish(TOPIC, data, false);
});
up.on('close', () => {
  console.error('uws_fanout: upstream closed');
  process.exit(1);
});
up.on('error', (e) => {
  console.error(`uws_fanout: upstream error: ${e.message}`);
  process.exit(1);
});
