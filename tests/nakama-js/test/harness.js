'use strict';
// Test harness: a fresh herald per test file (or per test), the official
// nakama-js client (JSON or protobuf), raw websockets, and bounded waits.
//
// Every wait here has a timeout; nothing sleeps longer than a "quiet period"
// used to check that something does NOT arrive.

const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { test, before, after } = require('node:test');

const WS = require('ws');

// Node has no browser globals: nakama-js needs a global WebSocket, and its
// heartbeat-timeout path reads `window` (reference §10.4). The subclass
// records every frame each client socket receives, with its frame type, so
// tests can look below the client library.
class RecordingWebSocket extends WS {
  constructor(address, protocols, options) {
    super(address, protocols, options);
    this.frames = [];
    this.closeInfo = null;
    this.on('message', (data, isBinary) => this.frames.push({ isBinary, data: Buffer.from(data) }));
    this.on('close', (code, reason) => {
      this.closeInfo = { code, reason: reason.toString() };
    });
    this.on('error', () => {});
  }
}
globalThis.WebSocket = RecordingWebSocket;
globalThis.window = globalThis;

const nakama = require('@heroiclabs/nakama-js');
const { WebSocketAdapterPb } = require('@heroiclabs/nakama-js-protobuf');

const HOST = '127.0.0.1';
const SERVER_KEY = 'defaultkey';
const ENCRYPTION_KEY = 'defaultencryptionkey';
/** How long a "nothing more arrives" check listens. */
const QUIET_MS = 300;
/** Default bound of every wait for something that should arrive. */
const WAIT_MS = 4000;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `cond` until it returns a truthy value or `timeout` ms pass. */
async function waitUntil(cond, what, timeout = WAIT_MS) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = cond();
    if (value) return value;
    if (Date.now() >= deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${typeof what === 'function' ? what() : what}`);
    }
    await sleep(5);
  }
}

/** Rejects if `promise` does not settle within `timeout` ms. */
function within(promise, timeout, what) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeout} ms: ${what}`)), timeout);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

/** The error a promise rejects with (fails if it resolves). */
async function rejection(promise, what = 'the promise') {
  try {
    const value = await promise;
    assert.fail(`${what} resolved with ${JSON.stringify(value)}, expected a rejection`);
  } catch (error) {
    if (error instanceof assert.AssertionError) throw error;
    return error;
  }
}

let unique = 0;
/** A short string of letters and digits, unique in this process. */
function uid(prefix = 'u') {
  unique += 1;
  return `${prefix}${unique}x${crypto.randomBytes(4).toString('hex')}`;
}

// ---- the server ------------------------------------------------------------

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, HOST, () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function httpGetStatus(port, urlPath = '/') {
  return new Promise((resolve) => {
    const req = http.get({ host: HOST, port, path: urlPath, timeout: 500 }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(0));
  });
}

const stripAnsi = (text) => text.replace(/\x1b\[[0-9;]*m/g, '');

/** A running herald process. */
class Herald {
  constructor(proc, port, dataDir, ownsDir, { adminPort = null, name = 'herald' } = {}) {
    this.proc = proc;
    this.port = port;
    /** The admin listener's port (when started with `admin`), else null. */
    this.adminPort = adminPort;
    /** How logs and failures name this process. */
    this.name = name;
    this.dataDir = dataDir;
    this.ownsDir = ownsDir;
    this.stderr = [];
    this.exit = null;
    this.exited = new Promise((resolve) => {
      proc.on('exit', (code, signal) => {
        this.exit = { code, signal };
        resolve(this.exit);
      });
    });
    proc.stderr.on('data', (chunk) => this.stderr.push(chunk));
  }

  get url() {
    return `http://${HOST}:${this.port}`;
  }

  /** Everything herald wrote to stderr so far (or since `mark`). */
  log(mark = 0) {
    return stripAnsi(Buffer.concat(this.stderr).toString('utf8').slice(mark));
  }

  logMark() {
    return Buffer.concat(this.stderr).toString('utf8').length;
  }

  alive() {
    return this.exit === null;
  }

  /** SIGTERM, then waits for a clean exit (SIGKILL after 8 s). Returns the exit. */
  async stop({ keepData = false } = {}) {
    if (this.alive()) {
      this.proc.kill('SIGTERM');
      const timer = setTimeout(() => this.proc.kill('SIGKILL'), 8000);
      await this.exited;
      clearTimeout(timer);
    }
    if (this.ownsDir && !keepData) fs.rmSync(this.dataDir, { recursive: true, force: true });
    return this.exit;
  }
}

/**
 * Starts herald on a free loopback port with a fresh data directory (or
 * `dataDir`), and waits until `GET /` answers 200. With `admin`, the admin
 * listener gets a free port too (`herald.adminPort`) and the wait is for
 * `GET /readyz` 200 there. `args` may be a function of the attempt's
 * `{port, adminPort}` (for flags that name them). `onSpawn(herald)` sees
 * each process as soon as it exists (to clean it up if we are killed).
 */
async function startHerald(args = [], { dataDir, admin = false, name, onSpawn } = {}) {
  const bin = process.env.HERALD_BIN;
  if (!bin) throw new Error('HERALD_BIN must point to the herald binary');
  const ownsDir = !dataDir;
  const dir = dataDir || fs.mkdtempSync(path.join(os.tmpdir(), 'herald-js-'));
  let lastLog = '';
  for (let attempt = 0; attempt < 3; attempt += 1) {
    const port = await freePort();
    const adminPort = admin ? await freePort() : null;
    const extra = typeof args === 'function' ? args({ port, adminPort }) : args;
    const adminArgs = admin ? ['--admin-listen', `${HOST}:${adminPort}`] : [];
    const proc = spawn(bin, ['--listen', `${HOST}:${port}`, '--data-dir', dir, ...adminArgs, ...extra], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, NO_COLOR: '1', RUST_LOG: process.env.HERALD_LOG || 'info' },
    });
    const herald = new Herald(proc, port, dir, ownsDir, { adminPort, name });
    if (onSpawn) onSpawn(herald);
    const deadline = Date.now() + 15000;
    while (herald.alive() && Date.now() < deadline) {
      const ready = admin ? (await httpGetStatus(adminPort, '/readyz')) === 200 : (await httpGetStatus(port)) === 200;
      if (ready) return herald;
      await sleep(20);
    }
    lastLog = herald.log();
    await herald.stop({ keepData: true });
    // A port taken between our probe and herald's bind: try another one.
  }
  if (ownsDir) fs.rmSync(dir, { recursive: true, force: true });
  throw new Error(`${name || 'herald'} did not start:\n${lastLog}`);
}

// ---- tokens ------------------------------------------------------------------

const b64url = (buf) => Buffer.from(buf).toString('base64url');

/**
 * Mints an HS256 session token like Nakama's (as a second Nakama sharing the
 * key would). Defaults: a random user id, a letters-and-digits username, one
 * hour of validity, herald's default key.
 */
function mintToken({
  userId = crypto.randomUUID(),
  username = uid('ext'),
  exp = Math.floor(Date.now() / 1000) + 3600,
  key = ENCRYPTION_KEY,
  header = { alg: 'HS256', typ: 'JWT' },
  omitExp = false,
} = {}) {
  const claims = { tid: crypto.randomUUID(), uid: userId, usn: username, exp, iat: Math.floor(Date.now() / 1000) };
  if (omitExp) delete claims.exp;
  const head = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  const signature = header.alg === 'none' ? '' : b64url(crypto.createHmac('sha256', key).update(head).digest());
  return { token: `${head}.${signature}`, userId, username };
}

/** Decodes a JWT's claims (no verification). */
function claimsOf(token) {
  return JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString('utf8'));
}

// ---- events ------------------------------------------------------------------

const PRESENCE_KEYS = ['session_id', 'status', 'user_id', 'username'];

/** A presence reduced to its four wire fields (for comparisons). */
function presence(p) {
  return { user_id: p.user_id, session_id: p.session_id, username: p.username, status: p.status };
}

/** An event as `{joins, leaves}` with both lists present (for comparisons). */
function norm(event) {
  return {
    joins: (event.joins || []).map(presence),
    leaves: (event.leaves || []).map(presence),
  };
}

/** Sorts presences by session id (snapshot order is unspecified). */
function bySession(list) {
  return [...list].sort((a, b) => (a.session_id < b.session_id ? -1 : a.session_id > b.session_id ? 1 : 0));
}

/**
 * Checks the decoded shape nakama-js hands to `onstatuspresence` and
 * `followUsers` callers. JSON: empty lists and `persistence:false` are
 * omitted, so `joins`/`leaves` are absent when empty; a snapshot's
 * `presences` is the exception, always there (`[]` when nobody is online).
 * Protobuf: ts-proto fills defaults (arrays present, `persistence:false`).
 */
function checkPresenceShape(p, mode) {
  if (mode === 'json') {
    assert.deepEqual(Object.keys(p).sort(), PRESENCE_KEYS, `presence keys: ${JSON.stringify(p)}`);
  } else {
    assert.deepEqual(Object.keys(p).sort(), ['persistence', ...PRESENCE_KEYS].sort(), `presence keys: ${JSON.stringify(p)}`);
    assert.equal(p.persistence, false);
  }
  assert.equal(typeof p.status, 'string', `status must always be set: ${JSON.stringify(p)}`);
  assert.match(p.user_id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  assert.match(p.session_id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
}

function checkEventShape(event, mode) {
  if (mode === 'json') {
    for (const key of Object.keys(event)) assert.ok(['joins', 'leaves'].includes(key), `event key ${key}: ${JSON.stringify(event)}`);
    for (const key of ['joins', 'leaves']) {
      if (key in event) assert.ok(Array.isArray(event[key]) && event[key].length > 0, `empty ${key} must be omitted: ${JSON.stringify(event)}`);
    }
  } else {
    assert.ok(Array.isArray(event.joins) && Array.isArray(event.leaves), `protobuf event lists: ${JSON.stringify(event)}`);
  }
  const all = [...(event.joins || []), ...(event.leaves || [])];
  assert.ok(all.length > 0, 'an event has a join or a leave');
  for (const p of all) checkPresenceShape(p, mode);
}

/** Checks a `followUsers` result and returns its presences (sorted by session). */
function snapshotPresences(status, mode) {
  assert.ok(status && typeof status === 'object', `snapshot: ${JSON.stringify(status)}`);
  // Both formats: exactly one key, `presences`, always an array (JSON too: Godot requires it).
  assert.deepEqual(Object.keys(status), ['presences'], `snapshot keys: ${JSON.stringify(status)}`);
  assert.ok(Array.isArray(status.presences), `snapshot presences: ${JSON.stringify(status)}`);
  for (const p of status.presences) checkPresenceShape(p, mode);
  return bySession(status.presences.map(presence));
}

// ---- nakama-js sockets ---------------------------------------------------------

/** One nakama-js socket and everything it received. */
class Sock {
  constructor(ctx, session, socket, mode, status, server = ctx.server) {
    this.ctx = ctx;
    /** The herald this socket is connected to. */
    this.server = server;
    this.session = session;
    this.socket = socket;
    this.mode = mode;
    this.connectedWithStatus = status;
    this.events = [];
    this.read = 0;
    this.disconnects = [];
    /** Notifications nakama-js handed to `onnotification` (the --single-socket notice). */
    this.notifications = [];
    this.sessionId = null;
    this.ws = null;
    socket.onstatuspresence = (event) => this.events.push(event);
    socket.ondisconnect = (event) => this.disconnects.push(event);
    socket.onnotification = (notification) => this.notifications.push(notification);
  }

  get userId() {
    return this.session.user_id;
  }

  get username() {
    return this.session.username;
  }

  /** This session's presence with `status` (the session id must be known). */
  me(status) {
    assert.ok(this.sessionId, 'session id not learnt yet');
    return { user_id: this.userId, session_id: this.sessionId, username: this.username, status };
  }

  unread() {
    return this.events.slice(this.read);
  }

  /** The next `n` unread events (shape-checked), waiting for them. */
  async next(n = 1, timeout = WAIT_MS) {
    await waitUntil(
      () => this.events.length - this.read >= n,
      () => `${n} event(s) on ${this.username}'s socket; got ${JSON.stringify(this.unread())}`,
      timeout,
    );
    const out = this.events.slice(this.read, this.read + n);
    this.read += n;
    for (const event of out) checkEventShape(event, this.mode);
    return out;
  }

  /** The next event, normalized. */
  async event(timeout) {
    return norm((await this.next(1, timeout))[0]);
  }

  /** Asserts that no unread event arrives within `ms`. */
  async quiet(ms = QUIET_MS) {
    await sleep(ms);
    assert.deepEqual(this.unread(), [], `unexpected events on ${this.username}'s socket`);
  }

  /**
   * Sets a status, waits for the ack and for this session's own echo event
   * (every session follows its own user); learns the session id from it.
   * Returns the echo, normalized.
   */
  async update(status) {
    const ack = await this.socket.updateStatus(status);
    this.checkAck(ack);
    const echo = await this.event();
    const mine = status === undefined ? echo.leaves : echo.joins;
    assert.equal(mine.length, 1, `echo: ${JSON.stringify(echo)}`);
    assert.equal(mine[0].user_id, this.userId);
    if (status !== undefined) assert.equal(mine[0].status, status);
    if (!this.sessionId) this.sessionId = mine[0].session_id;
    assert.equal(mine[0].session_id, this.sessionId);
    return echo;
  }

  /** An ack is an envelope with the cid and no message. */
  checkAck(ack) {
    assert.equal(typeof ack.cid, 'string');
    assert.ok(ack.cid.length > 0);
    if (this.mode === 'json') {
      assert.deepEqual(Object.keys(ack), ['cid'], `ack: ${JSON.stringify(ack)}`);
    } else {
      const set = Object.entries(ack).filter(([key, value]) => key !== 'cid' && value !== undefined);
      assert.deepEqual(set, [], `ack carries a message: ${JSON.stringify(ack)}`);
    }
  }

  /** Follows users and returns the snapshot presences (checked, sorted). */
  async follow(ids) {
    return snapshotPresences(await this.socket.followUsers(ids), this.mode);
  }

  async unfollow(ids) {
    this.checkAck(await this.socket.unfollowUsers(ids));
  }

  isOpen() {
    return this.socket.adapter.isOpen();
  }

  /** Closes from the client side and waits until the socket is closed. */
  async disconnect() {
    const ws = this.ws;
    this.socket.disconnect(false);
    if (ws) await waitUntil(() => ws.readyState === WS.CLOSED, 'the client close to complete');
  }

  /** Awaits `promise`, failing at once if the server closes this socket first. */
  async unlessClosed(promise, timeout = WAIT_MS) {
    let done = false;
    const closed = (async () => {
      await waitUntil(() => done || this.ws.closeInfo, 'the request or a close', timeout);
      if (!done) throw new Error(`closed by the server instead: ${JSON.stringify(this.ws.closeInfo)}`);
    })();
    try {
      return await Promise.race([promise, closed]);
    } finally {
      done = true;
      closed.catch(() => {});
    }
  }

  /** Waits until the server closed this socket; returns `{code, reason}`. */
  async closedByServer(timeout = WAIT_MS) {
    await waitUntil(() => this.ws.closeInfo, `${this.username}'s socket to close`, timeout);
    return this.ws.closeInfo;
  }
}

// ---- raw sockets -----------------------------------------------------------------

/** A websocket without any client library. */
class RawConn {
  constructor(ws) {
    this.ws = ws;
    this.frames = [];
    this.read = 0;
    this.closeInfo = null;
    ws.on('message', (data, isBinary) => {
      const buf = Buffer.from(data);
      this.frames.push({ isBinary, data: buf, text: isBinary ? null : buf.toString('utf8') });
    });
    ws.on('close', (code, reason) => {
      this.closeInfo = { code, reason: reason.toString() };
    });
    ws.on('error', () => {});
  }

  sendText(text) {
    this.ws.send(Buffer.from(text, 'utf8'), { binary: false });
  }

  sendJson(value) {
    this.sendText(JSON.stringify(value));
  }

  sendBinary(bytes) {
    this.ws.send(Buffer.from(bytes), { binary: true });
  }

  /** The next frame, waiting for it. */
  async next(timeout = WAIT_MS) {
    await waitUntil(() => this.frames.length > this.read, () => `a frame (closed: ${JSON.stringify(this.closeInfo)})`, timeout);
    const frame = this.frames[this.read];
    this.read += 1;
    return frame;
  }

  /** The next `n` frames' texts, in arrival order. */
  async nextTexts(n, timeout = WAIT_MS) {
    const out = [];
    for (let i = 0; i < n; i += 1) out.push(await this.nextText(timeout));
    return out;
  }

  /**
   * A request's reply and the event it causes, in whichever order they
   * arrive (the reference does not order a reply against events).
   */
  async replyAndEvent(timeout = WAIT_MS) {
    const texts = await this.nextTexts(2, timeout);
    const reply = texts.find((t) => 'cid' in JSON.parse(t));
    const event = texts.find((t) => t !== reply);
    assert.ok(reply !== undefined && event !== undefined, `expected a reply and an event: ${JSON.stringify(texts)}`);
    return { reply, event: JSON.parse(event) };
  }

  /** The next frame's text (asserts a text frame). */
  async nextText(timeout) {
    const frame = await this.next(timeout);
    assert.equal(frame.isBinary, false, 'expected a text frame');
    return frame.text;
  }

  /** The next frame as parsed JSON. */
  async nextJson(timeout) {
    return JSON.parse(await this.nextText(timeout));
  }

  /** The next text frame whose JSON has a `cid` (skipping events). */
  async nextReply(timeout = WAIT_MS) {
    const deadline = Date.now() + timeout;
    for (;;) {
      const text = await this.nextText(Math.max(1, deadline - Date.now()));
      if ('cid' in JSON.parse(text)) return text;
    }
  }

  /** Waits for the server's close; returns `{code, reason}`. */
  async closed(timeout = WAIT_MS) {
    await waitUntil(() => this.closeInfo, 'the server to close the socket', timeout);
    return this.closeInfo;
  }

  isOpen() {
    return this.ws.readyState === WS.OPEN;
  }

  close() {
    if (this.ws.readyState === WS.OPEN || this.ws.readyState === WS.CONNECTING) this.ws.terminate();
  }
}

/**
 * Opens a raw websocket to `/ws?<query>`. Resolves once open (rejects on a
 * refused handshake). `options` go to `ws` (headers, autoPong, ...).
 */
function rawConnect(server, query, options = {}) {
  const ws = new WS(`ws://${HOST}:${server.port}/ws?${query}`, options);
  const conn = new RawConn(ws);
  return within(
    new Promise((resolve, reject) => {
      ws.once('open', () => resolve(conn));
      ws.once('unexpected-response', (_req, res) => {
        reject(new Error(`handshake refused: HTTP ${res.statusCode}`));
        ws.terminate();
      });
      ws.once('error', reject);
    }),
    WAIT_MS,
    'raw websocket open',
  );
}

/**
 * A bare websocket handshake with `http`: resolves `{status, body, headers}`
 * (status 101 when the upgrade was accepted; that socket is closed at once).
 */
function handshake(server, pathAndQuery, headers = {}) {
  return within(
    new Promise((resolve, reject) => {
      const req = http.request({
        host: HOST,
        port: server.port,
        path: pathAndQuery,
        method: 'GET',
        headers: {
          Connection: 'Upgrade',
          Upgrade: 'websocket',
          'Sec-WebSocket-Version': '13',
          'Sec-WebSocket-Key': crypto.randomBytes(16).toString('base64'),
          ...headers,
        },
      });
      req.on('upgrade', (res, socket) => {
        socket.destroy();
        resolve({ status: res.statusCode, body: '', headers: res.headers });
      });
      req.on('response', (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString('utf8'), headers: res.headers }));
      });
      req.on('error', reject);
      req.end();
    }),
    WAIT_MS,
    `handshake ${pathAndQuery}`,
  );
}

/** A plain HTTP request: resolves `{status, headers, body}`. */
function request(server, method, pathAndQuery, { headers = {}, body } = {}) {
  return within(
    new Promise((resolve, reject) => {
      const req = http.request({ host: HOST, port: server.port, path: pathAndQuery, method, headers }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      });
      req.on('error', reject);
      if (body !== undefined) req.write(body);
      req.end();
    }),
    WAIT_MS,
    `${method} ${pathAndQuery}`,
  );
}

// ---- protobuf bytes for raw checks ------------------------------------------------

function varint(value) {
  const out = [];
  let v = value;
  while (v >= 0x80) {
    out.push((v & 0x7f) | 0x80);
    v = Math.floor(v / 128);
  }
  out.push(v);
  return out;
}

/** A length-delimited protobuf field. */
function pbField(number, payload) {
  const bytes = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : Buffer.from(payload);
  return Buffer.concat([Buffer.from(varint(number * 8 + 2)), Buffer.from(varint(bytes.length)), bytes]);
}

/** Parses a protobuf message into `[{number, wire, value}]` (value: Buffer or number). */
function pbParse(buf) {
  const fields = [];
  let i = 0;
  const readVarint = () => {
    let result = 0;
    let shift = 1;
    for (;;) {
      if (i >= buf.length) throw new Error('truncated varint');
      const byte = buf[i++];
      result += (byte & 0x7f) * shift;
      if (byte < 0x80) return result;
      shift *= 128;
    }
  };
  while (i < buf.length) {
    const key = readVarint();
    const number = Math.floor(key / 8);
    const wire = key & 7;
    if (wire === 0) fields.push({ number, wire, value: readVarint() });
    else if (wire === 2) {
      const len = readVarint();
      if (i + len > buf.length) throw new Error('truncated field');
      fields.push({ number, wire, value: buf.subarray(i, i + len) });
      i += len;
    } else throw new Error(`unexpected wire type ${wire}`);
  }
  return fields;
}

// ---- per-test context -------------------------------------------------------------

/** What a test gets: the server, clients, users, sockets; cleaned up after. */
class Ctx {
  constructor(server, mode = 'json') {
    this.server = server;
    this.mode = mode;
    this.socks = [];
    this.raws = [];
  }

  client() {
    return new nakama.Client(SERVER_KEY, HOST, String(this.server.port), false, 7000, false);
  }

  /** Authenticates a new user (custom id); username of letters and digits. */
  async user(prefix = 'u') {
    const session = await this.client().authenticateCustom(uid('cid'), true, uid(prefix));
    assert.equal(session.created, true);
    return session;
  }

  async users(n, prefix = 'u') {
    const out = [];
    for (let i = 0; i < n; i += 1) out.push(await this.user(prefix));
    return out;
  }

  /**
   * Connects a nakama-js socket (`mode`: 'json' or 'pb'). With `status`, the
   * session's own join event (status "") is awaited, checked and consumed,
   * and its session id learnt.
   */
  async connect(session, { status = false, mode = this.mode, node } = {}) {
    const adapter = mode === 'pb' ? new WebSocketAdapterPb() : new nakama.WebSocketAdapterText();
    const { client, server } = this.socketTarget(node);
    const socket = client.createSocket(false, false, adapter);
    const sock = new Sock(this, session, socket, mode, status, server);
    this.socks.push(sock);
    const connecting = socket.connect(session, status);
    sock.ws = socket.adapter._socket;
    await within(connecting, WAIT_MS, 'socket.connect');
    if (status) {
      const [first] = await sock.next(1);
      const event = norm(first);
      assert.equal(event.leaves.length, 0, `connect join: ${JSON.stringify(first)}`);
      assert.equal(event.joins.length, 1, `connect join: ${JSON.stringify(first)}`);
      assert.equal(event.joins[0].user_id, session.user_id);
      assert.equal(event.joins[0].username, session.username);
      assert.equal(event.joins[0].status, '');
      sock.sessionId = event.joins[0].session_id;
    }
    return sock;
  }

  /**
   * Where the next socket goes: `{client, server}`. One server here; the
   * cluster context spreads sockets over its nodes (`node` picks one).
   */
  // eslint-disable-next-line no-unused-vars
  socketTarget(node) {
    return { client: this.client(), server: this.server };
  }

  async raw(query, options) {
    const conn = await rawConnect(this.socketTarget().server, query, options);
    this.raws.push(conn);
    return conn;
  }

  /**
   * Checks every frame each nakama-js socket of this test received: the frame
   * type of its format, decodable, events without a cid, replies with one.
   */
  checkFrames() {
    for (const sock of this.socks) {
      if (!sock.ws) continue;
      for (const frame of sock.ws.frames) {
        if (sock.mode === 'json') {
          assert.equal(frame.isBinary, false, 'JSON sessions get text frames');
          const message = JSON.parse(frame.data.toString('utf8'));
          if ('status_presence_event' in message) {
            assert.deepEqual(Object.keys(message), ['status_presence_event'], `an event frame: ${frame.data}`);
          } else if ('notifications' in message) {
            assert.deepEqual(Object.keys(message), ['notifications'], `a notification frame: ${frame.data}`);
          } else {
            assert.equal(typeof message.cid, 'string', `a reply frame: ${frame.data}`);
          }
        } else {
          assert.equal(frame.isBinary, true, 'protobuf sessions get binary frames');
          const fields = pbParse(frame.data);
          const numbers = fields.map((f) => f.number);
          if (numbers.includes(27)) {
            assert.deepEqual(numbers, [27], `an event frame: ${frame.data.toString('hex')}`);
          } else if (numbers.includes(23)) {
            assert.deepEqual(numbers, [23], `a notification frame: ${frame.data.toString('hex')}`);
          } else {
            assert.equal(numbers[0], 1, `a reply frame starts with its cid: ${frame.data.toString('hex')}`);
          }
        }
      }
    }
  }

  async cleanup() {
    for (const sock of this.socks) {
      try {
        if (sock.isOpen()) sock.socket.disconnect(false);
      } catch {
        // already closed
      }
    }
    for (const raw of this.raws) raw.close();
  }
}

/**
 * Wraps `node:test`'s `test` for a file whose servers run for the whole
 * file: `test(name, [options], fn)` runs `fn(ctx, t)` with `makeCtx()`,
 * checks every nakama-js frame afterwards and cleans up. `servers()` lists
 * the processes whose stderr matters (each with a `name`): each must be
 * running before and after the test, and when a test fails, what each wrote
 * during it is printed.
 */
function wrapTest(servers, makeCtx) {
  return (name, options, fn) => {
    if (typeof options === 'function') {
      fn = options;
      options = {};
    }
    return test(name, options, async (t) => {
      const list = servers();
      assert.ok(list.length > 0 && list.every((s) => s), 'the servers are not running');
      for (const server of list) assert.ok(server.alive(), `${server.name} is not running: ${server.log()}`);
      const marks = list.map((server) => server.logMark());
      const ctx = makeCtx();
      try {
        await fn(ctx, t);
        ctx.checkFrames();
      } catch (error) {
        if (!options.todo) {
          list.forEach((server, i) => {
            process.stderr.write(`\n--- ${server.name} stderr during "${name}" ---\n${server.log(marks[i])}--- end ---\n`);
          });
        }
        throw error;
      } finally {
        await ctx.cleanup();
      }
      list.forEach((server, i) => assert.ok(server.alive(), `${server.name} died: ${server.log(marks[i])}`));
    });
  };
}

/**
 * Stops `server` (SIGTERM) after a file's tests and asserts that it was
 * still running and exits cleanly; prints its stderr otherwise.
 */
async function stopChecked(server) {
  const crashed = !server.alive();
  const exit = await server.stop();
  if (crashed || exit.code !== 0) {
    process.stderr.write(`\n--- ${server.name} stderr ---\n${server.log()}\n`);
  }
  assert.equal(crashed, false, `${server.name} died during the tests: ${JSON.stringify(exit)}`);
  assert.deepEqual(exit, { code: 0, signal: null }, `${server.name} exits cleanly on SIGTERM`);
}

/**
 * Starts one herald for the calling test file (`before`/`after`), and
 * returns `{ test, server }` where `test(name, [options], fn)` runs
 * `fn(ctx, t)` with a fresh {@link Ctx}. When a test fails, herald's stderr
 * written during that test is printed; after the file, herald must still be
 * running and must exit cleanly on SIGTERM.
 */
function useHerald(args = [], { mode = 'json' } = {}) {
  const state = { server: null };
  before(async () => {
    state.server = await startHerald(args);
  });
  after(async () => {
    if (state.server) await stopChecked(state.server);
  });
  const wrapped = wrapTest(() => [state.server], () => new Ctx(state.server, mode));
  return { test: wrapped, get server() { return state.server; } };
}

/**
 * Runs `fn(ctx)` against a herald of its own, started with `args`; prints its
 * stderr if `fn` throws, and stops it afterwards.
 */
async function withHerald(args, fn, { mode = 'json', dataDir } = {}) {
  const server = await startHerald(args, { dataDir });
  const ctx = new Ctx(server, mode);
  try {
    return await fn(ctx, server);
  } catch (error) {
    process.stderr.write(`\n--- herald ${args.join(' ')} stderr ---\n${server.log()}--- end ---\n`);
    throw error;
  } finally {
    await ctx.cleanup();
    await server.stop();
  }
}

module.exports = {
  nakama,
  WebSocketAdapterPb,
  WS,
  HOST,
  SERVER_KEY,
  QUIET_MS,
  WAIT_MS,
  sleep,
  waitUntil,
  within,
  rejection,
  uid,
  freePort,
  httpGetStatus,
  startHerald,
  useHerald,
  wrapTest,
  stopChecked,
  Herald,
  Sock,
  withHerald,
  Ctx,
  mintToken,
  claimsOf,
  presence,
  norm,
  bySession,
  checkEventShape,
  snapshotPresences,
  rawConnect,
  handshake,
  request,
  pbField,
  pbParse,
};
