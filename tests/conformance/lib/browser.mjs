// Shared pieces of the browser conformance tests: a static server for a test page plus the
// real @metered-ca/realtime bundle, Debian Chromium launched with the flags the tests need,
// and a polling helper.
import http from "node:http";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { WAIT_MS } from "./parlor.mjs";

const SDK_FILE = fileURLToPath(import.meta.resolve("@metered-ca/realtime"));
export const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";

/** Serve `page` at `/` and the SDK bundle at `/sdk/index.mjs` on 127.0.0.1 (port 0). */
export function startStatic(page) {
  const sdk = readFileSync(SDK_FILE);
  const srv = http.createServer((req, res) => {
    const u = new URL(req.url, "http://x");
    if (u.pathname === "/" || u.pathname === "/index.html") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(page);
    } else if (u.pathname === "/favicon.ico") {
      res.writeHead(204);
      res.end();
    } else if (u.pathname === "/sdk/index.mjs") {
      res.writeHead(200, { "content-type": "text/javascript; charset=utf-8" });
      res.end(sdk);
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  return new Promise((resolve) => srv.listen(0, "127.0.0.1", () => resolve(srv)));
}

/**
 * Headless Debian Chromium with a fake microphone and no mDNS candidate hiding.
 * `extraArgs` are appended to the command line (e.g. `--use-file-for-fake-audio-capture=…`).
 */
export function launchChromium(extraArgs = []) {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--use-fake-ui-for-media-stream",
      "--use-fake-device-for-media-stream",
      "--autoplay-policy=no-user-gesture-required",
      "--disable-features=WebRtcHideLocalIpsWithMdns",
      ...extraArgs,
    ],
  });
}

/** Call `fn` every 200 ms until `pred(result)`; throw with the last result after `ms`. */
export async function poll(fn, pred, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await fn();
    if (pred(last)) return last;
    if (Date.now() > deadline) throw new Error(`timeout after ${ms} ms waiting for ${what}; last=${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
