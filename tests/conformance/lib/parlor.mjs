// Shared helpers for the Node / browser conformance tests: start `parlor serve` on
// port 0 with a temp TOML config, parse its `listening on ws://127.0.0.1:PORT` line,
// mint tokens with `parlor token`, and small async wait utilities.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync, openSync, readFileSync, closeSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import readline from "node:readline";

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const CONFORMANCE_DIR = path.resolve(HERE, "..");
export const REPO_ROOT = path.resolve(HERE, "../../..");
export const WAIT_MS = 20_000;

export const DEV_KEY = "pk_test_x";
export const KEY_ALL = "pk_live_all";
export const KEY_ROOMS = "pk_live_rooms";
export const KEY_NOPUB = "pk_live_nopub";
export const KEY_SUSPENDED = "pk_live_susp";
export const JWT_SECRET = "sk_test_secret_0123456789"; // >= 16 bytes: see FINDINGS.md #1
export const JWT_KID = "main";

export function parlorBin() {
  const env = process.env.PARLOR_BIN;
  if (env) return path.isAbsolute(env) ? env : path.resolve(REPO_ROOT, env);
  return path.join(REPO_ROOT, "target", "debug", "parlor");
}

const ALL = '["subscribe", "publish", "presence", "send"]';
/** BASE_CONFIG with a [limits] table (top-level keys must precede any table). */
export function configWithLimits(limits) {
  const table = "[limits]\n" + Object.entries(limits).map(([k, v]) => `${k} = ${v}`).join("\n") + "\n";
  return BASE_CONFIG.replace(/^(admin_secret = .*\n)/, `$1\n${table}`);
}

export const BASE_CONFIG = `admin_secret = "adm_secret"

[[accounts]]
id = "acme"
max_connections = 100

[[accounts]]
id = "frozen"
suspended = true

[[keys]]
key = "${KEY_ALL}"
account = "acme"
channels = ["*"]
actions = ${ALL}

[[keys]]
key = "${KEY_ROOMS}"
account = "acme"
channels = ["room-*"]
actions = ${ALL}

[[keys]]
key = "${KEY_NOPUB}"
account = "acme"
channels = ["*"]
actions = ["subscribe", "presence", "send"]

[[keys]]
key = "${KEY_SUSPENDED}"
account = "frozen"
channels = ["*"]
actions = ${ALL}

[[secrets]]
kid = "${JWT_KID}"
secret = "${JWT_SECRET}"
account = "acme"
`;

/**
 * Start `parlor serve --listen 127.0.0.1:0 --config <tmp> --dev-key pk_test_x`.
 * Resolves to { url, port, http, proc, stop(), logs() }.
 */
export async function startParlor({ config = BASE_CONFIG, devKey = true, listenPort = 0 } = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), "parlor-conf-"));
  const cfg = path.join(dir, "parlor.toml");
  writeFileSync(cfg, config);
  const errPath = path.join(dir, "stderr.log");
  const errFd = openSync(errPath, "w");
  const args = ["serve", "--listen", `127.0.0.1:${listenPort}`, "--config", cfg];
  if (devKey) args.push("--dev-key", DEV_KEY);
  const proc = spawn(parlorBin(), args, { stdio: ["ignore", "pipe", errFd] });
  closeSync(errFd);
  const stdout = [];
  const rl = readline.createInterface({ input: proc.stdout });
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`parlor did not print its listening line within ${WAIT_MS} ms; ` +
        `stdout=${JSON.stringify(stdout)} stderr=${readFileSync(errPath, "utf8").slice(-3000)}`));
    }, WAIT_MS);
    rl.on("line", (line) => {
      stdout.push(line);
      const m = /^listening on ws:\/\/127\.0\.0\.1:(\d+)\s*$/.exec(line);
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    });
    proc.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`parlor exited early (code ${code}): ${readFileSync(errPath, "utf8").slice(0, 1500)}`));
    });
    proc.on("error", (e) => { clearTimeout(timer); reject(e); });
  });
  return {
    port,
    url: `ws://127.0.0.1:${port}`,
    http: `http://127.0.0.1:${port}`,
    proc,
    /** Send SIGTERM and resolve with the exit code. */
    terminate() {
      if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve(proc.exitCode);
      const exited = new Promise((r) => proc.once("exit", (code) => r(code)));
      proc.kill("SIGTERM");
      return exited;
    },
    logs: () => `stdout:\n${stdout.join("\n")}\nstderr:\n${readFileSync(errPath, "utf8").slice(-6000)}`,
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = new Promise((r) => proc.once("exit", r));
      proc.kill("SIGKILL");
      await exited;
    },
  };
}

/** Mint a JWT with `parlor token`. */
export function mintToken({ ttlSecs = 3600, channels = [], permissions = [], peerMetadata, metadata } = {}) {
  const args = ["token", "--secret", JWT_SECRET, "--kid", JWT_KID, `--ttl-secs=${ttlSecs}`];
  for (const c of channels) args.push("--channel", c);
  for (const p of permissions) args.push("--permission", p);
  if (peerMetadata) args.push("--peer-metadata", JSON.stringify(peerMetadata));
  if (metadata) args.push("--metadata", JSON.stringify(metadata));
  const tok = execFileSync(parlorBin(), args, { encoding: "utf8", timeout: WAIT_MS }).trim();
  if (tok.split(".").length !== 3) throw new Error(`parlor token printed no JWT: ${tok}`);
  return tok;
}

export function jwtClaims(token) {
  return JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString("utf8"));
}

/** Reject after `ms` with a descriptive error. */
export function withTimeout(promise, what, ms = WAIT_MS) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timeout after ${ms} ms: ${what}`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

/** Records every event of the named types from an emitter; `waitFor` scans history. */
export class Recorder {
  constructor(name) {
    this.name = name;
    this.events = []; // { type, payload }
    this.consumed = new Set();
    this.waiters = new Set();
  }
  attach(emitter, types) {
    for (const t of types) emitter.on(t, (payload) => this.push(t, payload));
    return this;
  }
  push(type, payload) {
    this.events.push({ type, payload });
    for (const w of [...this.waiters]) w();
  }
  of(type) { return this.events.filter((e) => e.type === type).map((e) => e.payload); }
  waitFor(type, pred = () => true, what = "", ms = WAIT_MS) {
    return new Promise((resolve, reject) => {
      const check = () => {
        for (let i = 0; i < this.events.length; i++) {
          const e = this.events[i];
          if (!this.consumed.has(i) && e.type === type && pred(e.payload)) {
            this.consumed.add(i);
            cleanup();
            resolve(e.payload);
            return true;
          }
        }
        return false;
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`[${this.name}] no '${type}' ${what} within ${ms} ms; events: ` +
          JSON.stringify(this.events.map((e) => e.type + ":" + safeJson(e.payload))).slice(0, 4000)));
      }, ms);
      const waiter = () => { check(); };
      const cleanup = () => { clearTimeout(timer); this.waiters.delete(waiter); };
      if (!check()) this.waiters.add(waiter);
    });
  }
}

function safeJson(v) {
  try { return JSON.stringify(v); } catch { return String(v); }
}

/**
 * Start nats-server (Debian package) on a free loopback port for cluster tests.
 * Resolves to { url, stop() }.
 */
export async function startNats() {
  const { existsSync } = await import("node:fs");
  const bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"].find((p) => existsSync(p)) || "nats-server";
  const port = await freePort();
  const daemon = await startDaemon(bin, ["-a", "127.0.0.1", "-p", String(port)], port, "nats-server");
  return { url: `nats://127.0.0.1:${port}`, stop: daemon.stop };
}

/** A free TCP port on 127.0.0.1 (the OS picks it; released before returning). */
async function freePort() {
  const net = await import("node:net");
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, "127.0.0.1", () => { const p = srv.address().port; srv.close(() => resolve(p)); });
    srv.on("error", reject);
  });
}

/** Spawn `bin args` and wait until 127.0.0.1:`port` accepts TCP; resolves to { stop() } (SIGKILL). */
async function startDaemon(bin, args, port, what) {
  const net = await import("node:net");
  const proc = spawn(bin, args, { stdio: "ignore" });
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const ok = await new Promise((r) => {
      const s = net.connect(port, "127.0.0.1", () => { s.destroy(); r(true); });
      s.on("error", () => r(false));
    });
    if (ok) break;
    if (Date.now() > deadline) { proc.kill("SIGKILL"); throw new Error(`${what} did not start`); }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = new Promise((r) => proc.once("exit", r));
      proc.kill("SIGKILL");
      await exited;
    },
  };
}

export const TURN_SECRET = "conformance-turn-secret";

/**
 * coturn (Debian package `coturn`) on a free loopback port with TURN REST credentials
 * (`use-auth-secret`, TURN_SECRET unless given) and loopback peers allowed.
 */
export async function startCoturn({ secret = TURN_SECRET } = {}) {
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), "parlor-coturn-"));
  const args = ["-n", "--listening-ip=127.0.0.1", `--listening-port=${port}`, "--relay-ip=127.0.0.1",
    "--use-auth-secret", `--static-auth-secret=${secret}`, "--realm=parlor.test", "--allow-loopback-peers",
    "--no-tls", "--no-dtls", "--no-cli", "--no-stdout-log", `--log-file=${path.join(dir, "turn.log")}`,
    `--pidfile=${path.join(dir, "turn.pid")}`, `--userdb=${path.join(dir, "turndb")}`];
  const daemon = await startDaemon("turnserver", args, port, "coturn (turnserver)");
  return { port, url: `turn:127.0.0.1:${port}?transport=udp`, stop: daemon.stop };
}

/** BASE_CONFIG plus a [turn] table minting credentials for `urls` with TURN_SECRET. */
export function turnConfig(urls) {
  return `${BASE_CONFIG}\n[turn]\nurls = ${JSON.stringify(urls)}\nsecret = "${TURN_SECRET}"\nttl_secs = 600\n`;
}

/** BASE_CONFIG plus a [cluster] table for a node on `natsUrl`. */
export function clusterConfig(natsUrl, { heartbeatMs = 250, nodeTimeoutMs = 1500 } = {}) {
  return `${BASE_CONFIG}\n[cluster]\nnats_url = "${natsUrl}"\nname = "conformance"\nheartbeat_ms = ${heartbeatMs}\nnode_timeout_ms = ${nodeTimeoutMs}\n`;
}

/** Start `n` cluster nodes on `natsUrl` and wait until each is in sync with the others. */
export async function startCluster(natsUrl, n) {
  const nodes = [];
  for (let i = 0; i < n; i++) nodes.push(await startParlor({ config: clusterConfig(natsUrl) }));
  const deadline = Date.now() + WAIT_MS;
  for (const node of nodes) {
    for (;;) {
      const body = await fetch(`${node.http}/metrics`).then((r) => r.text());
      const m = /^parlor_cluster_nodes (\d+)/m.exec(body);
      if (m && Number(m[1]) === n - 1) break;
      if (Date.now() > deadline) throw new Error(`node ${node.url} never synced:\n${node.logs()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return nodes;
}
