// The page over https://: served by a proxy with TLS on, it must open its WebSocket with
// wss:// to the same host and show live quotes.
//
// usage: node https_test.mjs BASE_URL KEY SYMBOLS
//   BASE_URL  the proxy, e.g. https://127.0.0.1:8443 (its certificate is the test's own: the
//             browser is told to accept it)
//   KEY       a valid client key
//   SYMBOLS   every symbol the proxy carries, A,B,C
// Uses the system Chromium (/usr/bin/chromium, or env CHROMIUM). Exits 0 when the checks pass.

import { chromium } from "playwright-core";

const [base, key, symArg] = process.argv.slice(2);
const symbols = (symArg || "").split(",").filter(Boolean).sort();
if (!base || !base.startsWith("https://") || !key || !symbols.length) {
  console.error("usage: node https_test.mjs https://HOST:PORT KEY SYMBOLS");
  process.exit(2);
}
const DEADLINE_MS = 15000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  // The test's certificate comes from a CA the browser does not know.
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const sockets = [];
  page.on("websocket", w => sockets.push(w.url()));
  const response = await page.goto(`${base}/#key=${encodeURIComponent(key)}`, { timeout: DEADLINE_MS });
  if (!response || response.status() !== 200) throw new Error(`GET / over https answered ${response && response.status()}`);
  await page.waitForFunction(
    w => w.every(s => document.querySelector(`tr[data-symbol="${s}"] .bid`)?.textContent)
      && document.querySelector("#state").textContent.includes("live"),
    symbols, { timeout: DEADLINE_MS, polling: 100 });
  const want = base.replace(/^https:/, "wss:") + "/";
  if (!sockets.length || !sockets.every(u => u === want)) throw new Error(`WebSockets ${sockets}, expected ${want}`);
  console.log(`ok - over https: rows for ${symbols}, live, WebSocket ${sockets[0]}`);
} catch (e) {
  console.error(`FAILED: ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
