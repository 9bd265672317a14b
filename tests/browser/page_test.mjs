// Drives the page fxproxy serves at GET / in headless Chromium, the way a person would use it.
//
// usage: node page_test.mjs BASE_URL KEY SYMBOLS SCREENSHOT [MARKET_URL]
//   BASE_URL    the proxy, e.g. http://127.0.0.1:8765   (or env FXPROXY_URL)
//   KEY         a valid client key                       (or env FXPROXY_KEY)
//   SYMBOLS     every symbol the proxy carries, A,B,C    (or env FXPROXY_SYMBOLS)
//   SCREENSHOT  where to save the desktop screenshot     (or env FXPROXY_SCREENSHOT)
//   MARKET_URL  optional: a proxy with market_hours = fx and market_closed_dates = 2026-12-25
//               that took one quote of each symbol, stamped 2026-12-04T21:58:00Z (a Friday),
//               and no more; the page's market banner is checked against it on a set clock
//               (or env FXPROXY_MARKET_URL)
// Uses the system Chromium (/usr/bin/chromium, or env CHROMIUM); playwright downloads no browser.
// Exits 0 when every check passes, 1 with a message naming the failed check otherwise.

import { chromium } from "playwright-core";

const [baseArg, keyArg, symArg, shotArg, marketArg] = process.argv.slice(2);
const base = (baseArg || process.env.FXPROXY_URL || "").replace(/\/+$/, "");
const key = keyArg || process.env.FXPROXY_KEY;
const symbols = (symArg || process.env.FXPROXY_SYMBOLS || "").split(",").filter(Boolean).sort();
const shot = shotArg || process.env.FXPROXY_SCREENSHOT;
const marketBase = (marketArg || process.env.FXPROXY_MARKET_URL || "").replace(/\/+$/, "");
if (!base || !key || symbols.length < 2 || !shot) {
  console.error("usage: node page_test.mjs BASE_URL KEY SYMBOLS(at least two, comma-separated) SCREENSHOT");
  process.exit(2);
}
const DEADLINE_MS = 15000;

class CheckFailed extends Error {}
const fail = msg => { throw new CheckFailed(msg); };
let step = "start";

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

// The pages' clock: a Wednesday afternoon, running, so the market is open and the screenshot
// is the same whatever day the test runs.
const WEEKDAY = new Date("2026-12-02T14:00:00Z");

// Every page opened here records what it asks for and what goes wrong in it.
const opened = [];
async function openPage(fragment, viewport = { width: 960, height: 360 }, { at = WEEKDAY, fixed = false, url = base } = {}) {
  const context = await browser.newContext({ viewport, deviceScaleFactor: 1 });
  if (fixed) await context.clock.setFixedTime(at); else await context.clock.install({ time: at });
  // Every Content-Security-Policy violation is recorded; the page itself must cause none.
  await context.addInitScript(() => {
    window.__violations = [];
    document.addEventListener("securitypolicyviolation", e => window.__violations.push(`${e.effectiveDirective} blocked ${e.blockedURI || "inline"}`));
  });
  const page = await context.newPage();
  const rec = { page, requests: [], sockets: [], errors: [] };
  page.on("request", r => rec.requests.push(r.url()));
  page.on("websocket", w => rec.sockets.push(w.url()));
  page.on("pageerror", e => rec.errors.push("page error: " + e.message));
  page.on("console", m => { if (m.type() === "error") rec.errors.push("console error: " + m.text()); });
  opened.push(rec);
  const response = await page.goto(url + "/" + fragment, { timeout: DEADLINE_MS });
  if (!response || response.status() !== 200) fail(`GET / answered ${response && response.status()}, expected 200`);
  const type = response.headers()["content-type"] || "";
  if (!/^text\/html;\s*charset=utf-8$/i.test(type)) fail(`GET / has Content-Type "${type}", expected "text/html; charset=utf-8"`);
  checkHardened(response.headers());
  return rec;
}

// The page handles a key: it runs only its own code, connects only back to the proxy, cannot
// be framed, and tells nobody where the browser came from.
function checkHardened(headers) {
  const csp = headers["content-security-policy"] || "";
  for (const part of ["default-src 'none'", "connect-src 'self'", "frame-ancestors 'none'", "script-src 'sha256-", "style-src 'sha256-", "base-uri 'none'", "form-action 'none'"]) {
    if (!csp.includes(part)) fail(`the Content-Security-Policy "${csp}" lacks ${part}`);
  }
  if (/unsafe|\*|ws:|wss:|http:|https:/.test(csp)) fail(`the Content-Security-Policy "${csp}" allows more than the page's own code and origin`);
  if (headers["x-content-type-options"] !== "nosniff") fail(`X-Content-Type-Options is "${headers["x-content-type-options"]}", expected nosniff`);
  if (headers["referrer-policy"] !== "no-referrer") fail(`Referrer-Policy is "${headers["referrer-policy"]}", expected no-referrer`);
  if (headers["x-frame-options"] !== "DENY") fail(`X-Frame-Options is "${headers["x-frame-options"]}", expected DENY`);
}

const stateText = page => page.locator("#state").textContent();
const rowSymbols = page => page.$$eval("tr[data-symbol]", rows => rows.map(r => r.dataset.symbol));

// Polls in the page until fn(arg) is truthy; on time-out, fails with what the page shows.
async function waitFor(page, what, fn, arg) {
  try {
    await page.waitForFunction(fn, arg, { timeout: DEADLINE_MS, polling: 100 });
  } catch (e) {
    if (!/Timeout/i.test(e.message)) throw e;
    fail(`${what}: not seen within ${DEADLINE_MS} ms (state "${await stateText(page)}", rows [${await rowSymbols(page)}])`);
  }
}

async function waitForRows(page, want) {
  await waitFor(page, `rows for ${want}`,
    w => w.every(s => document.querySelector(`tr[data-symbol="${s}"] .bid`)?.textContent), want);
}

async function waitForTick(page, symbol) {
  const before = await page.locator(`tr[data-symbol="${symbol}"] .bid`).textContent();
  await waitFor(page, `a new ${symbol} bid after ${before}`,
    ([s, b]) => document.querySelector(`tr[data-symbol="${s}"] .bid`)?.textContent !== b, [symbol, before]);
}

async function checkOnlyProxyTraffic(rec, proxy = base) {
  const violations = await rec.page.evaluate(() => window.__violations);
  if (violations.length) fail(`the page broke its own Content-Security-Policy: ${violations.join("; ")}`);
  const origin = new URL(proxy).origin, wsOrigin = origin.replace(/^http/, "ws");
  for (const url of [...rec.requests, ...rec.sockets]) {
    if (url.startsWith("data:")) continue;
    const u = new URL(url);
    if (u.origin !== origin && u.origin !== wsOrigin) fail(`the page made a request outside the proxy: ${url}`);
    if (u.search.includes(encodeURIComponent(key)) || u.search.includes(key)) fail(`the key appeared in a query string: ${url}`);
  }
  for (const url of rec.sockets) {
    if (new URL(url).origin !== wsOrigin) fail(`WebSocket to ${url}, expected ${wsOrigin}/`);
  }
  if (rec.errors.length) fail(rec.errors.join("\n"));
}

const banner = page => page.$eval("#market", el => el.hidden ? null : el.textContent);
const ageCells = page => page.$$eval("tr[data-symbol] .age", tds => tds.map(td => td.textContent));

// Sets the page's fixed clock and waits for the market banner to say `want` (null: hidden).
async function atTime(page, when, want) {
  await page.clock.setFixedTime(new Date(when));
  await waitFor(page, `at ${when}, the market banner ${want === null ? "hidden" : JSON.stringify(want)}`,
    w => { const el = document.querySelector("#market"); return w === null ? el.hidden : !el.hidden && el.textContent === w; }, want);
}

try {
  step = "good key: every symbol, live, ticking";
  const good = await openPage(`#key=${encodeURIComponent(key)}`);
  let page = good.page;
  await waitForRows(page, symbols);
  await waitFor(page, '#state "live"', () => document.querySelector("#state").textContent.includes("live"));
  const got = await rowSymbols(page);
  if (JSON.stringify(got) !== JSON.stringify(symbols)) fail(`rows are [${got}], expected exactly [${symbols}] in symbol order`);
  await waitForTick(page, symbols[0]);
  for (const s of symbols) {
    const cells = await page.$eval(`tr[data-symbol="${s}"]`, tr =>
      Object.fromEntries(["bid", "ask", "spread", "change", "age"].map(c => [c, tr.querySelector("." + c).textContent])));
    const bid = Number(cells.bid), ask = Number(cells.ask);
    if (!(bid > 0 && ask > 0 && bid <= ask)) fail(`${s}: bid ${cells.bid} / ask ${cells.ask} are not prices with bid <= ask`);
    if (!/^\d+\.\d$/.test(cells.spread)) fail(`${s}: spread "${cells.spread}" is not pips with one decimal`);
    if (!/^[+-]?\d+\.\d$/.test(cells.change)) fail(`${s}: change "${cells.change}" is not signed pips with one decimal`);
    if (!/^\d+(\.\d)? (s|min|h)$/.test(cells.age)) fail(`${s}: age "${cells.age}" is not a duration`);
  }
  if (await page.evaluate(() => localStorage.length)) fail("the page stored something in localStorage without 'remember' ticked");
  await page.screenshot({ path: shot, fullPage: true });
  await checkOnlyProxyTraffic(good);
  console.log(`ok - good key: rows [${got}], bids tick, screenshot ${shot}`);

  step = "wrong key: refused with the reason, no rows, no retry";
  const bad = await openPage(`#key=${encodeURIComponent("wrong-" + key)}`);
  page = bad.page;
  await waitFor(page, '#state "Authentication failed"',
    () => document.querySelector("#state").textContent.includes("Authentication failed"));
  if ((await rowSymbols(page)).length) fail(`a refused page shows rows [${await rowSymbols(page)}]`);
  // The refusal must stick: watch past the first back-off (about 1 s) for a retry with the same key.
  await page.waitForTimeout(2500);
  if (bad.sockets.length !== 1) fail(`the page opened ${bad.sockets.length} WebSockets after a 1008 refusal, expected 1 (no retry with the same key)`);
  if (!(await stateText(page)).includes("Authentication failed")) fail(`#state changed to "${await stateText(page)}" after the refusal`);
  await checkOnlyProxyTraffic(bad);
  console.log("ok - wrong key: refused, no rows, no retry");

  step = "symbol filter: only the chosen rows";
  const want = symbols.slice(0, 2);
  const filtered = await openPage(`#key=${encodeURIComponent(key)}&symbols=${want.join(",")}`);
  page = filtered.page;
  await waitForRows(page, want);
  await waitForTick(page, want[1]);
  const only = await rowSymbols(page);
  if (JSON.stringify(only) !== JSON.stringify(want)) fail(`rows are [${only}], expected only [${want}]`);
  await checkOnlyProxyTraffic(filtered);
  console.log(`ok - filter: rows [${only}]`);

  step = "phone: 390x844 without sideways scrolling";
  const phone = await openPage(`#key=${encodeURIComponent(key)}`, { width: 390, height: 844 });
  page = phone.page;
  await waitForRows(page, symbols);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 0) fail(`the page is ${overflow} px wider than a 390 px phone screen`);
  if (process.env.FXPROXY_PHONE_SCREENSHOT) await page.screenshot({ path: process.env.FXPROXY_PHONE_SCREENSHOT });
  await checkOnlyProxyTraffic(phone);
  console.log("ok - phone: fits 390 px");

  step = "hardened: injected code, outside connections and framing are blocked";
  const hostile = await openPage(`#key=${encodeURIComponent(key)}`);
  page = hostile.page;
  await waitForRows(page, symbols);
  await checkOnlyProxyTraffic(hostile);
  // What an injection (a quote's text slipped into innerHTML, say) would try: an inline script,
  // an event handler, a request to somewhere else. `localhost` is another origin than 127.0.0.1.
  const other = base.replace("127.0.0.1", "localhost");
  const outcome = await page.evaluate(async other => {
    const script = document.createElement("script");
    script.textContent = "window.__injected = true";
    document.body.append(script);
    const div = document.createElement("div");
    div.innerHTML = '<img src="data:," onerror="window.__handler = true">';
    document.body.append(div);
    let fetched = "sent";
    try { await fetch(other + "/healthz"); } catch (e) { fetched = "refused"; }
    const ws = new WebSocket(other.replace(/^http/, "ws") + "/");
    await new Promise(resolve => { ws.onerror = ws.onclose = resolve; setTimeout(resolve, 3000); });
    await new Promise(resolve => setTimeout(resolve, 200));
    return { injected: window.__injected === true, handler: window.__handler === true, fetched, violations: window.__violations };
  }, other);
  if (outcome.injected) fail("an injected inline script ran");
  if (outcome.handler) fail("an injected event handler ran");
  if (outcome.fetched !== "refused") fail(`a fetch to ${other} was ${outcome.fetched}`);
  const seen = outcome.violations.join("; ");
  for (const directive of ["script-src-elem", "script-src-attr", "connect-src"]) {
    if (!seen.includes(directive)) fail(`no ${directive} violation reported (reported: ${seen})`);
  }
  if (hostile.sockets.some(u => u.startsWith(other.replace(/^http/, "ws")))) fail(`a WebSocket to ${other} was opened`);
  // A page of another origin that frames the proxy's page gets an error page in the frame;
  // /healthz, which sets no frame-ancestors, frames fine (so the check can see a frame's content).
  const framing = await (await browser.newContext()).newPage();
  await framing.setContent(`<iframe src="${base}/healthz"></iframe><iframe src="${base}/"></iframe>`);
  const [control, frame] = framing.frames().slice(1);
  for (const f of [control, frame]) await f.waitForLoadState().catch(() => {});
  const controlText = await control.evaluate(() => document.body.textContent).catch(e => String(e));
  if (!controlText.includes('"status"')) fail(`the framed /healthz shows "${controlText}"`);
  const framed = await frame.evaluate(() => !!document.querySelector("#state")).catch(() => false);
  if (framed) fail("the page was shown inside another site's frame");
  await framing.context().close();
  console.log(`ok - hardened: ${seen}; framing refused`);

  let passed = 5;
  if (marketBase) {
    step = "market hours: the banner and the ages follow the proxy's rule";
    const rec = await openPage(`#key=${encodeURIComponent(key)}`, undefined,
      { at: new Date("2026-12-04T21:59:00Z"), fixed: true, url: marketBase });
    page = rec.page;
    await waitForRows(page, symbols);
    await atTime(page, "2026-12-04T21:59:00Z", null);
    await waitFor(page, "ages of a minute", () => [...document.querySelectorAll("tr[data-symbol] .age")].every(td => td.textContent === "60 s"));
    const CLOSED = "market closed — opens Sun 21:00 UTC";
    await atTime(page, "2026-12-04T22:00:30Z", CLOSED);
    await waitFor(page, "'closed' in every age cell", () => [...document.querySelectorAll("tr[data-symbol] .age")].every(td => td.textContent === "closed"));
    if (!(await stateText(page)).includes("live")) fail(`#state is "${await stateText(page)}" at the weekend, expected live`);
    await atTime(page, "2026-12-05T12:00:00Z", CLOSED);
    await atTime(page, "2026-12-06T21:00:30Z", null);
    const open = await ageCells(page);
    if (!open.every(a => /^\d+ h$/.test(a))) fail(`after the opening the ages are [${open}], expected hours`);
    // 2026-12-25, a Friday, is a closed date: from 21:00 the evening before it joins the weekend.
    await atTime(page, "2026-12-24T20:59:00Z", null);
    await atTime(page, "2026-12-24T21:01:00Z", CLOSED);
    await atTime(page, "2026-12-27T21:00:00Z", null);
    if (process.env.FXPROXY_MARKET_SCREENSHOT) {
      await atTime(page, "2026-12-05T12:00:00Z", CLOSED);
      await page.screenshot({ path: process.env.FXPROXY_MARKET_SCREENSHOT });
    }
    await checkOnlyProxyTraffic(rec, marketBase);
    console.log(`ok - market hours: "${CLOSED}" from Friday 22:00 and from 21:00 before a closed date, gone at the opening`);
    passed++;
  }

  console.log(`page_test: ${passed} passed, 0 failed`);
} catch (e) {
  console.error(`FAILED - ${step}: ${e instanceof CheckFailed ? e.message : e.stack || e}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
