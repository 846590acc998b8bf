'use strict';
// Cluster mode for the nakama-js suites: per test file, one nats-server with
// JetStream (the presence log), one PostgreSQL (the accounts) and N herald
// nodes sharing both, with every nakama-js socket and REST call spread
// round-robin over the nodes. Built on harness.js: the same Ctx, Sock, waits
// and frame checks; only where sockets and requests go differs.
//
//   const herald = useCluster(args, { mode: 'json', nodes: 3 });
//   herald.test('...', async (ctx) => {
//     const a = await ctx.connect(await ctx.user('a'));   // socket on node 0
//     const f = await ctx.connect(await ctx.user('f'));   // socket on node 1
//     ctx.connect(session, { node: 2 });                  // pinned
//     ctx.client(1).authenticateCustom(...);               // REST on node 1
//     await ctx.userOn(2, 'x');                            // a new user, via node 2
//     a.server, ctx.nodes[i], ctx.admin(node, 'GET', '/v2/status?...')
//   });
//   withCluster(args, async (ctx, cluster) => ...)       // a cluster of its own
//
// Each test's sockets take the nodes in turn from node 0 (user() and
// client() have their own turn), so placements are the same on every run.
//
// Binaries: herald from HERALD_BIN; nats-server (>= 2.11) from
// tests/.deps/nats-server (tests/install-deps.sh), else HERALD_NATS_SERVER;
// PostgreSQL from HERALD_PG_BIN, else `pg_config --bindir`, else the newest
// /usr/lib/postgresql/N/bin. Postgres refuses to run as root: as root its
// directory belongs to `postgres` and its programs run under `runuser -u
// postgres --` (as tests/common/postgres.rs does).
//
// Processes: every one is stopped by its own PID (never by name) after the
// file; if the test process exits or is killed first, an exit handler
// kills them and removes their directories. Every wait is bounded.

const assert = require('node:assert/strict');
const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { before, after } = require('node:test');

const h = require('./harness');

const HOST = h.HOST;
/** Role and database Herald uses in Postgres. */
const PG_ROLE = 'herald';
const PG_PASSWORD = 'herald-js-pw';
const PG_DATABASE = 'herald';
/** How long nats-server or Postgres gets to start or stop. */
const START_MS = 30000;
/** Oldest nats-server with what Herald needs of JetStream KV. */
const NATS_MIN = [2, 11];

const asRoot = typeof process.geteuid === 'function' && process.geteuid() === 0;
const sleepSync = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

// ---- cleanup if we die -------------------------------------------------------

/** PIDs to kill and directories to remove if the process exits early. */
const leftovers = { pids: new Map(), dirs: new Set() };

function alivePid(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return error.code === 'EPERM';
  }
}

function cleanupSync() {
  for (const [pid, signal] of leftovers.pids) {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
  const deadline = Date.now() + 3000;
  for (const pid of leftovers.pids.keys()) {
    while (alivePid(pid) && Date.now() < deadline) sleepSync(10);
  }
  leftovers.pids.clear();
  for (const dir of leftovers.dirs) fs.rmSync(dir, { recursive: true, force: true });
  leftovers.dirs.clear();
}

let hooked = false;
function hookExit() {
  if (hooked) return;
  hooked = true;
  process.on('exit', cleanupSync);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.once(signal, () => {
      cleanupSync();
      process.exit(128 + os.constants.signals[signal]);
    });
  }
}

function tempDir(prefix) {
  hookExit();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  leftovers.dirs.add(dir);
  return dir;
}

function removeDir(dir) {
  fs.rmSync(dir, { recursive: true, force: true });
  leftovers.dirs.delete(dir);
}

/** Waits (bounded) for a child process to exit; SIGKILL to `pid` past the bound. */
async function waitExit(exited, pid, what) {
  let timer;
  const late = new Promise((resolve) => {
    timer = setTimeout(() => resolve('late'), START_MS);
  });
  if ((await Promise.race([exited, late])) === 'late') {
    process.stderr.write(`${what} did not stop in ${START_MS} ms: SIGKILL ${pid}\n`);
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
    await exited;
  }
  clearTimeout(timer);
}

/** A promise of a child's exit, `{code, signal}`, set up at spawn time. */
function exitOf(proc) {
  return new Promise((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) resolve({ code: proc.exitCode, signal: proc.signalCode });
    else proc.on('exit', (code, signal) => resolve({ code, signal }));
  });
}

// ---- nats-server -------------------------------------------------------------

function natsBinary() {
  const bundled = path.resolve(__dirname, '..', '..', '.deps', 'nats-server');
  const candidates = [bundled, process.env.HERALD_NATS_SERVER].filter(Boolean);
  const bin = candidates.find((file) => {
    try {
      fs.accessSync(file, fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
  if (!bin) {
    throw new Error(`nats-server not found: run tests/install-deps.sh (${bundled}) or set HERALD_NATS_SERVER`);
  }
  const version = execFileSync(bin, ['--version'], { encoding: 'utf8', timeout: 10000 }).trim();
  const match = /v(\d+)\.(\d+)\.(\d+)/.exec(version);
  assert.ok(match, `nats-server --version: ${version}`);
  const [major, minor] = [Number(match[1]), Number(match[2])];
  assert.ok(major > NATS_MIN[0] || (major === NATS_MIN[0] && minor >= NATS_MIN[1]), `${bin} is ${version}; need >= ${NATS_MIN.join('.')}`);
  return bin;
}

/** A running nats-server with JetStream in a directory of its own. */
class Nats {
  constructor(bin) {
    this.bin = bin;
    this.dir = tempDir('herald-js-nats-');
    this.name = 'nats-server';
    this.proc = null;
    this.stderr = [];
  }

  get url() {
    return `nats://${HOST}:${this.port}`;
  }

  log() {
    return Buffer.concat(this.stderr).toString('utf8');
  }

  alive() {
    return this.proc !== null && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  async start() {
    for (let attempt = 0; ; attempt += 1) {
      this.port = await h.freePort();
      this.stderr = [];
      const proc = spawn(this.bin, ['-js', '-sd', path.join(this.dir, 'js'), '-a', HOST, '-p', String(this.port)], {
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      this.proc = proc;
      this.exited = exitOf(proc);
      leftovers.pids.set(proc.pid, 'SIGKILL');
      proc.stderr.on('data', (chunk) => this.stderr.push(chunk));
      const deadline = Date.now() + START_MS;
      while (this.alive() && Date.now() < deadline && !this.log().includes('Server is ready')) await h.sleep(10);
      if (this.alive() && this.log().includes('Server is ready')) return this;
      await this.stop();
      if (attempt >= 2) throw new Error(`nats-server did not start:\n${this.log()}`);
    }
  }

  async stop() {
    const proc = this.proc;
    if (!proc) return;
    if (this.alive()) proc.kill('SIGTERM');
    await waitExit(this.exited, proc.pid, 'nats-server');
    leftovers.pids.delete(proc.pid);
  }
}

// ---- PostgreSQL ------------------------------------------------------------------

function pgBinDir() {
  const dirs = [];
  if (process.env.HERALD_PG_BIN) dirs.push(process.env.HERALD_PG_BIN);
  try {
    dirs.push(execFileSync('pg_config', ['--bindir'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
  } catch {
    // no pg_config
  }
  try {
    const versions = fs.readdirSync('/usr/lib/postgresql').map(Number).filter((v) => v > 0).sort((a, b) => b - a);
    dirs.push(...versions.map((v) => `/usr/lib/postgresql/${v}/bin`));
  } catch {
    // not Debian's layout
  }
  const dir = dirs.find((d) => ['initdb', 'postgres', 'psql'].every((tool) => fs.existsSync(path.join(d, tool))));
  if (!dir) throw new Error('PostgreSQL server programs not found (run tests/install-deps.sh or set HERALD_PG_BIN)');
  return dir;
}

/** A PostgreSQL cluster of its own: initdb, server on 127.0.0.1, one role and database. */
class Postgres {
  constructor() {
    this.bin = pgBinDir();
    this.dir = tempDir('herald-js-pg-');
    this.name = 'postgres';
    this.proc = null;
    this.pid = null;
    fs.mkdirSync(this.sockDir);
    fs.chmodSync(this.dir, 0o700);
    if (asRoot) execFileSync('chown', ['-R', 'postgres:postgres', this.dir]);
  }

  get dataDir() {
    return path.join(this.dir, 'data');
  }

  get sockDir() {
    return path.join(this.dir, 'sock');
  }

  get logFile() {
    return path.join(this.dir, 'postgres.log');
  }

  /** The URL Herald gets (`--database-url`). */
  get url() {
    return `postgres://${PG_ROLE}:${encodeURIComponent(PG_PASSWORD)}@${HOST}:${this.port}/${PG_DATABASE}?sslmode=disable`;
  }

  /** `[program, args]` for a Postgres tool, as `postgres` when we are root. */
  command(tool, args) {
    const program = path.join(this.bin, tool);
    return asRoot ? ['runuser', ['-u', 'postgres', '--', program, ...args]] : [program, args];
  }

  tool(tool, args) {
    const [program, argv] = this.command(tool, args);
    try {
      return execFileSync(program, argv, { encoding: 'utf8', timeout: START_MS, stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (error) {
      throw new Error(`${tool} ${args.join(' ')} failed: ${error.stdout || ''}${error.stderr || error.message}`);
    }
  }

  /** Runs `sql` as the superuser over the unix socket. */
  sql(database, sql) {
    return this.tool('psql', ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-U', 'postgres', '-h', this.sockDir, '-p', String(this.port), '-d', database, '-c', sql]);
  }

  log() {
    try {
      return fs.readFileSync(this.logFile, 'utf8');
    } catch {
      return '';
    }
  }

  alive() {
    return this.proc !== null && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  async start() {
    this.tool('initdb', ['-D', this.dataDir, '-U', 'postgres', '--auth-local=trust', '--auth-host=scram-sha-256', '--no-sync', '--encoding=UTF8', '--locale=C']);
    for (let attempt = 0; ; attempt += 1) {
      this.port = await h.freePort();
      if (await this.tryStart()) break;
      if (attempt >= 2) throw new Error(`postgres did not start:\n${this.log()}`);
    }
    this.sql('postgres', `CREATE ROLE ${PG_ROLE} LOGIN PASSWORD '${PG_PASSWORD}'`);
    this.sql('postgres', `CREATE DATABASE ${PG_DATABASE} OWNER ${PG_ROLE}`);
    return this;
  }

  /** Starts the server; true once its pid file says "ready" (false if it exits). */
  async tryStart() {
    const log = fs.openSync(this.logFile, 'w');
    const [program, argv] = this.command('postgres', [
      '-D', this.dataDir, '-p', String(this.port), '-k', this.sockDir,
      '-c', 'listen_addresses=127.0.0.1',
      // A test database need not survive a power cut.
      '-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off',
      '-c', 'max_connections=200',
    ]);
    const proc = spawn(program, argv, { stdio: ['ignore', log, log] });
    fs.closeSync(log);
    this.proc = proc;
    this.exited = exitOf(proc);
    leftovers.pids.set(proc.pid, 'SIGKILL');
    const pidFile = path.join(this.dataDir, 'postmaster.pid');
    const deadline = Date.now() + START_MS;
    while (this.alive() && Date.now() < deadline) {
      let lines = [];
      try {
        lines = fs.readFileSync(pidFile, 'utf8').split('\n');
      } catch {
        // not written yet
      }
      // Line 1 is the server's PID, line 8 its state.
      if (lines.length >= 8 && lines[7].trim() === 'ready') {
        this.pid = Number(lines[0].trim());
        // The server itself: immediate shutdown if we die.
        leftovers.pids.set(this.pid, 'SIGQUIT');
        return true;
      }
      await h.sleep(20);
    }
    if (this.alive()) proc.kill('SIGKILL');
    await this.exited;
    leftovers.pids.delete(proc.pid);
    return false;
  }

  /** Immediate shutdown of the server (by its PID), then waits for it. */
  async stop() {
    const proc = this.proc;
    if (!proc) return;
    if (this.pid !== null) {
      try {
        process.kill(this.pid, 'SIGQUIT');
      } catch {
        // gone already
      }
    } else if (this.alive()) {
      proc.kill('SIGKILL');
    }
    await waitExit(this.exited, this.pid ?? proc.pid, 'postgres');
    leftovers.pids.delete(proc.pid);
    if (this.pid !== null) leftovers.pids.delete(this.pid);
    this.pid = null;
  }
}

// ---- the cluster -----------------------------------------------------------------

/**
 * Starts nats-server, Postgres and `nodes` herald nodes (node ids n0, n1,
 * ...) with `args` each (or `args(i)`), and waits until every node's
 * `/readyz` answers 200. Returns `{nats, postgres, nodes, stop()}`.
 */
async function startCluster(args = [], { nodes = 3 } = {}) {
  // `spawned`: every herald process started, also those of a failed start.
  const cluster = { nats: null, postgres: null, nodes: [], spawned: [] };
  cluster.stop = async () => {
    const exits = await Promise.all(cluster.spawned.map((node) => node.stop()));
    cluster.spawned.forEach((node) => leftovers.pids.delete(node.proc.pid));
    if (cluster.nats) await cluster.nats.stop();
    if (cluster.postgres) await cluster.postgres.stop();
    for (const dir of [cluster.nats?.dir, cluster.postgres?.dir]) if (dir) removeDir(dir);
    return exits;
  };
  try {
    const natsBin = natsBinary();
    cluster.postgres = new Postgres();
    cluster.nats = new Nats(natsBin);
    await Promise.all([cluster.postgres.start(), cluster.nats.start()]);
    const common = ['--nats-url', cluster.nats.url, '--database-url', cluster.postgres.url];
    cluster.nodes = await Promise.all(
      Array.from({ length: nodes }, (_, i) => startNode(cluster, i, [...common, ...(typeof args === 'function' ? args(i) : args)])),
    );
    return cluster;
  } catch (error) {
    await cluster.stop().catch(() => {});
    throw error;
  }
}

/** Starts node `i` of `cluster` with `args` (cluster flags included). */
function startNode(cluster, i, args) {
  const nodeId = `n${i}`;
  return h.startHerald(['--node-id', nodeId, ...args], {
    admin: true,
    name: `herald ${nodeId}`,
    onSpawn: (herald) => {
      hookExit();
      cluster.spawned.push(herald);
      leftovers.pids.set(herald.proc.pid, 'SIGKILL');
      leftovers.dirs.add(herald.dataDir);
      herald.exited.then(() => leftovers.pids.delete(herald.proc.pid));
    },
  }).then((herald) => {
    herald.nodeId = nodeId;
    herald.index = i;
    return herald;
  });
}

/**
 * A test's context on the cluster: `client()` and `user()` go to the nodes
 * in turn (REST), `connect()` and `raw()` too (sockets, their own turn), so
 * consecutive sockets of a test are on different nodes. `{node: i}` (an
 * index or a herald) pins a socket; `client(i)` a REST call. `ctx.server`
 * is node 0 (what single-server helpers read).
 */
class ClusterCtx extends h.Ctx {
  constructor(nodes, mode) {
    super(nodes[0], mode);
    this.nodes = nodes;
    this.restTurn = 0;
    this.socketTurn = 0;
  }

  /** Node `which` (an index or a herald), or the next in `turn` when undefined. */
  pick(which, turn) {
    if (which === undefined) {
      const node = this.nodes[this[turn] % this.nodes.length];
      this[turn] += 1;
      return node;
    }
    if (typeof which === 'number') {
      assert.ok(which >= 0 && which < this.nodes.length, `no node ${which}`);
      return this.nodes[which];
    }
    assert.ok(this.nodes.includes(which), 'not a node of this cluster');
    return which;
  }

  clientOf(node) {
    return new h.nakama.Client(h.SERVER_KEY, HOST, String(node.port), false, 7000, false);
  }

  /** A client of node `which`, or of the next node in turn. */
  client(which) {
    return this.clientOf(this.pick(which, 'restTurn'));
  }

  socketTarget(which) {
    const server = this.pick(which, 'socketTurn');
    return { client: this.clientOf(server), server };
  }

  /** Authenticates a new user on node `node` (or the next in turn). */
  async userOn(node, prefix = 'u') {
    const session = await this.client(node).authenticateCustom(h.uid('cid'), true, h.uid(prefix));
    assert.equal(session.created, true);
    return session;
  }

  /** A request to a node's admin listener (backend API), with the default http key. */
  admin(which, method, pathAndQuery, { body, key = 'defaulthttpkey' } = {}) {
    const node = this.pick(which, 'restTurn');
    const headers = key === null ? {} : { Authorization: `Bearer ${key}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    return h.request({ port: node.adminPort }, method, pathAndQuery, { headers, body });
  }
}

/**
 * The cluster counterpart of `useHerald`: one cluster for the calling test
 * file (`before`/`after`), `{ test, nodes, cluster }`, where `test(name,
 * [options], fn)` runs `fn(ctx, t)` with a fresh {@link ClusterCtx}. When a
 * test fails, what every node wrote during it is printed. After the file,
 * every node must still be running and exit cleanly on SIGTERM; nats-server
 * and Postgres are stopped and every directory removed.
 */
function useCluster(args = [], { mode = 'json', nodes = 3 } = {}) {
  const state = { cluster: null };
  before(async () => {
    state.cluster = await startCluster(args, { nodes });
  });
  after(async () => {
    const { cluster } = state;
    if (!cluster) return;
    const crashed = cluster.nodes.filter((node) => !node.alive());
    try {
      const exits = await Promise.all(cluster.nodes.map((node) => h.stopChecked(node).then(() => null, (e) => e)));
      const failed = exits.filter(Boolean);
      if (failed.length) throw failed[0];
    } finally {
      await cluster.stop();
    }
    assert.deepEqual(crashed.map((n) => n.name), [], 'every node runs until the end');
  });
  const test = h.wrapTest(() => state.cluster?.nodes ?? [], () => new ClusterCtx(state.cluster.nodes, mode));
  return {
    test,
    /** Scenarios shared with single-server files adapt where a cluster differs. */
    isCluster: true,
    get cluster() {
      return state.cluster;
    },
    get nodes() {
      return state.cluster.nodes;
    },
    get server() {
      return state.cluster.nodes[0];
    },
  };
}

/**
 * Runs `fn(ctx, cluster)` against a cluster of its own, started with `args`
 * (for flags one file's cluster does not have); prints every node's stderr if
 * `fn` throws, and stops everything afterwards.
 */
async function withCluster(args, fn, { mode = 'json', nodes = 3 } = {}) {
  const cluster = await startCluster(args, { nodes });
  const ctx = new ClusterCtx(cluster.nodes, mode);
  try {
    return await fn(ctx, cluster);
  } catch (error) {
    for (const node of cluster.nodes) process.stderr.write(`\n--- ${node.name} ${args.join(' ')} stderr ---\n${node.log()}--- end ---\n`);
    throw error;
  } finally {
    await ctx.cleanup();
    await cluster.stop();
  }
}

module.exports = { useCluster, withCluster, startCluster, ClusterCtx, Postgres, Nats };
