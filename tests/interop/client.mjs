// A client written the ordinary way with Node's `ws` library, run against fxproxy.
//
// usage: node client.mjs WS_URL KEY SYMBOLS
//   WS_URL   e.g. ws://127.0.0.1:8765/
//   KEY      a valid client key
//   SYMBOLS  every symbol the proxy carries, comma-separated (at least two)
//
// Checks: quotes arrive as JSON with symbol/bid/ask and bid < ask, only the requested symbols
// when filtered; a ping is answered; a wrong key is closed with 1008 "Authentication failed"
// before any quote; a normal close gets 1000 back. And TraderMade's v2 protocol, spoken as
// TraderMade's own client speaks it: login_ok, a subscription of SYMBOL:QUOTE answered with a
// sub_ack (a bare symbol invalid), ticks with string prices and a compact UTC time, nothing of a
// symbol after its unsubscription is acknowledged, login_reject for a wrong key. Exits 0 if all
// pass, 1 with a message if not.

import WebSocket from "ws";

const STEP_TIMEOUT_MS = 10000;
const QUOTES = 20;

const [url, key, symArg] = process.argv.slice(2);
const allSymbols = (symArg || "").split(",").filter(Boolean);
if (!url || !key || allSymbols.length < 2) {
  console.error("usage: node client.mjs WS_URL KEY SYMBOLS(at least two, comma-separated)");
  process.exit(2);
}

class Failed extends Error {}

// Resolves when `ws` emits `event`; rejects with `what` after the step timeout.
function next(ws, event, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Failed(`${what}: nothing within ${STEP_TIMEOUT_MS} ms`)), STEP_TIMEOUT_MS);
    ws.once(event, (...args) => { clearTimeout(timer); resolve(args); });
  });
}

function checkQuote(data, isBinary, allowed) {
  if (isBinary) throw new Failed(`binary frame, expected JSON text`);
  const text = data.toString();
  let q;
  try { q = JSON.parse(text); } catch { throw new Failed(`frame is not JSON: ${text}`); }
  if (!q || typeof q !== "object" || typeof q.symbol !== "string") throw new Failed(`not a quote with a string symbol: ${text}`);
  if (!allowed.has(q.symbol)) throw new Failed(`got ${q.symbol}, expected only ${[...allowed]}: ${text}`);
  if (typeof q.bid !== "number" || typeof q.ask !== "number") throw new Failed(`bid/ask are not numbers: ${text}`);
  if (!(q.bid < q.ask)) throw new Failed(`bid ${q.bid} is not below ask ${q.ask}: ${text}`);
  return q;
}

// Authenticates, checks quotes and a ping, closes cleanly; returns the symbols seen.
async function session(symbols, allowed) {
  const ws = new WebSocket(url, { handshakeTimeout: STEP_TIMEOUT_MS });
  const problems = [];
  const seen = new Set();
  let count = 0, first = true, enough;
  const gotEnough = new Promise(resolve => { enough = resolve; });
  ws.on("error", e => problems.push(new Failed(`socket error: ${e.message}`)));
  const onEarlyClose = (code, reason) => {
    problems.push(new Failed(`closed by the proxy with ${code} ${JSON.stringify(reason.toString())} after ${count} quotes`));
    enough();
  };
  ws.on("close", onEarlyClose);
  ws.on("message", (data, isBinary) => {
    if (first && !isBinary && data.toString() === "Connected") { first = false; return; }
    first = false;
    try {
      seen.add(checkQuote(data, isBinary, allowed).symbol);
      if (++count === QUOTES) enough();
    } catch (e) { problems.push(e); enough(); }
  });
  await next(ws, "open", "opening the connection");
  ws.send(JSON.stringify(symbols ? { userKey: key, symbol: symbols.join(",") } : { userKey: key }));
  const timer = setTimeout(enough, STEP_TIMEOUT_MS);
  await gotEnough;
  clearTimeout(timer);
  if (problems.length) throw problems[0];
  if (count < QUOTES) throw new Failed(`only ${count} quotes within ${STEP_TIMEOUT_MS} ms, expected ${QUOTES}`);

  ws.off("close", onEarlyClose);
  const pong = next(ws, "pong", "waiting for the pong");
  ws.ping(Buffer.from("interop"));
  const [payload] = await pong;
  if (payload.toString() !== "interop") throw new Failed(`pong carried ${JSON.stringify(payload.toString())}, expected "interop"`);

  const closed = next(ws, "close", "waiting for the close handshake");
  ws.close(1000, "done");
  const [code] = await closed;
  if (code !== 1000) throw new Failed(`after our close the proxy answered with code ${code}, expected 1000`);
  if (problems.length) throw problems[0];
  return seen;
}

async function refused(badKey) {
  const ws = new WebSocket(url, { handshakeTimeout: STEP_TIMEOUT_MS });
  const early = [];
  let first = true;
  ws.on("error", () => {}); // the close event below says what happened
  ws.on("message", (data, isBinary) => {
    if (!(first && !isBinary && data.toString() === "Connected")) early.push(data.toString());
    first = false;
  });
  await next(ws, "open", "opening the connection");
  const closed = next(ws, "close", "waiting for the refusal");
  ws.send(JSON.stringify({ userKey: badKey }));
  const [code, reason] = await closed;
  if (early.length) throw new Failed(`a wrong key received ${JSON.stringify(early[0])} before the refusal`);
  if (code !== 1008 || reason.toString() !== "Authentication failed") {
    throw new Failed(`a wrong key was closed with ${code} ${JSON.stringify(reason.toString())}, expected 1008 "Authentication failed"`);
  }
}

// A v2 session: every JSON message in order (plain text, the greeting, is skipped as
// TraderMade's client skips it); `take()` resolves with the next one.
function v2Messages(ws) {
  const queue = [], waiting = [];
  ws.on("message", (data, isBinary) => {
    if (isBinary) return;
    let msg;
    try { msg = JSON.parse(data.toString()); } catch { return; }
    const w = waiting.shift();
    if (w) w(msg); else queue.push(msg);
  });
  return (ms = STEP_TIMEOUT_MS) => {
    if (queue.length) return Promise.resolve(queue.shift());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Failed(`no message within ${ms} ms`)), ms);
      waiting.push(msg => { clearTimeout(timer); resolve(msg); });
    });
  };
}

function checkTick(msg, symbol) {
  const text = JSON.stringify(msg);
  if (msg.t !== "QUOTE" && msg.t !== "LAST_QUOTE") throw new Failed(`expected a tick, got ${text}`);
  if (msg.s !== symbol) throw new Failed(`a tick of ${msg.s}, subscribed to ${symbol} only: ${text}`);
  if (typeof msg.b !== "string" || typeof msg.a !== "string") throw new Failed(`prices are not strings: ${text}`);
  if (!(Number(msg.b) < Number(msg.a))) throw new Failed(`bid ${msg.b} is not below ask ${msg.a}: ${text}`);
  if (!/^\d{8}-\d{2}:\d{2}:\d{2}\.\d{3}$/.test(msg.ts)) throw new Failed(`ts is not YYYYMMDD-HH:MM:SS.mmm: ${text}`);
}

async function v2Session() {
  const [symbol, other] = allSymbols;
  const ws = new WebSocket(url, { handshakeTimeout: STEP_TIMEOUT_MS });
  ws.on("error", () => {});
  const take = v2Messages(ws);
  await next(ws, "open", "opening the connection");
  ws.send(JSON.stringify({ action: "login", key, fmt: "JSON" }));
  const login = await take();
  if (login.type !== "login_ok" || typeof login.symbol_limit !== "number") throw new Failed(`expected login_ok with a symbol_limit, got ${JSON.stringify(login)}`);
  ws.send(JSON.stringify({ action: "subscribe", symbols: [`${symbol}:QUOTE`, other], send_last: true }));
  const ack = await take();
  if (ack.type !== "sub_ack" || JSON.stringify(ack.accepted) !== JSON.stringify([`${symbol}:QUOTE`]) || JSON.stringify(ack.invalid) !== JSON.stringify([other])) {
    throw new Failed(`expected a sub_ack accepting ${symbol}:QUOTE, ${other} (bare) invalid; got ${JSON.stringify(ack)}`);
  }
  for (let i = 0; i < QUOTES; i++) checkTick(await take(), symbol);
  ws.send(JSON.stringify({ action: "unsubscribe", symbols: [`${symbol}:QUOTE`] }));
  for (;;) {
    const msg = await take();
    if (msg.type === "sub_ack") break;
    checkTick(msg, symbol);
  }
  // Nothing more of it: the simulator streams every symbol several times a second.
  const late = await take(1000).catch(() => null);
  if (late) throw new Failed(`after the unsubscription was acknowledged: ${JSON.stringify(late)}`);
  const closed = next(ws, "close", "waiting for the close handshake");
  ws.close(1000, "done");
  await closed;

  const bad = new WebSocket(url, { handshakeTimeout: STEP_TIMEOUT_MS });
  bad.on("error", () => {});
  const badTake = v2Messages(bad);
  await next(bad, "open", "opening the connection");
  const badClosed = next(bad, "close", "waiting for the refusal");
  bad.send(JSON.stringify({ action: "login", key: "wrong-" + key, fmt: "JSON" }));
  const answer = await badTake();
  if (answer.type !== "login_reject") throw new Failed(`a wrong key got ${JSON.stringify(answer)}, expected login_reject`);
  const [code, reason] = await badClosed;
  if (code !== 1008 || reason.toString() !== "Authentication failed") {
    throw new Failed(`a wrong v2 key was closed with ${code} ${JSON.stringify(reason.toString())}, expected 1008 "Authentication failed"`);
  }
}

try {
  let seen = await session(null, new Set(allSymbols));
  console.log(`ok - all symbols: ${QUOTES} quotes from ${[...seen].sort()}, ping answered, closed with 1000`);
  const want = allSymbols.slice(0, 2);
  seen = await session(want, new Set(want));
  console.log(`ok - filter ${want}: ${QUOTES} quotes from ${[...seen].sort()} only`);
  await refused("wrong-" + key);
  console.log("ok - wrong key: 1008 Authentication failed, no quote first");
  await v2Session();
  console.log(`ok - v2: login_ok, sub_ack, ${QUOTES} ticks of ${allSymbols[0]}, none after unsubscribe, login_reject for a wrong key`);
  console.log("client.mjs: 4 passed, 0 failed");
} catch (e) {
  console.error(`FAILED: ${e instanceof Failed ? e.message : e.stack || e}`);
  process.exit(1);
}
