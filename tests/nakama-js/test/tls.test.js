'use strict';
// nakama-js with useSSL = true against herald --tls-cert/--tls-key, with a
// self-signed certificate generated at test time (openssl).
//
// Certificate trust: the client runs in a child node process started with
// NODE_EXTRA_CA_CERTS pointing at the generated certificate, so both fetch
// (REST) and ws (the socket) verify the chain and the host name as they
// would in production. NODE_TLS_REJECT_UNAUTHORIZED=0 would also work, but
// it turns verification off, so a server presenting the wrong certificate
// would pass. NODE_EXTRA_CA_CERTS is read only when node starts, hence the
// child; the same file is the child's script (HERALD_TLS_CHILD=1). A second
// child without the CA must fail, which shows verification is on.

const HOST = '127.0.0.1';
const WAIT_MS = 10000;

if (process.env.HERALD_TLS_CHILD) {
  child().then(
    () => process.exit(0),
    (error) => {
      const cause = error && error.cause ? `\ncaused by: ${error.cause.code || ''} ${error.cause.message}` : '';
      console.error(`tls child: ${error && error.stack ? error.stack : error}${cause}`);
      process.exit(1);
    },
  );
} else {
  parent();
}

/** Bounded wait for a promise. */
function within(promise, what, timeout = WAIT_MS) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeout} ms: ${what}`)), timeout);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

// ---- the client, in a child process -----------------------------------------

async function child() {
  globalThis.WebSocket = require('ws');
  globalThis.window = globalThis;
  const nakama = require('@heroiclabs/nakama-js');
  const port = process.env.HERALD_PORT;
  const tag = process.env.HERALD_TAG;
  const client = new nakama.Client('defaultkey', process.env.HERALD_HOST, port, true);

  const alice = await within(client.authenticateCustom(`tls-alice-${tag}`, true, `tlsalice${tag}`), 'authenticate A');
  if (process.env.HERALD_TLS_AUTH_ONLY) return;
  const bob = await within(client.authenticateCustom(`tls-bob-${tag}`, true, `tlsbob${tag}`), 'authenticate B');

  const socketA = client.createSocket(true, false);
  const socketB = client.createSocket(true, false);
  const events = [];
  let notify = () => {};
  socketB.onstatuspresence = (event) => {
    events.push(event);
    notify();
  };
  const waitEvent = (what, match) =>
    within(
      new Promise((resolve) => {
        const check = () => {
          const found = events.find(match);
          if (found) resolve(found);
        };
        notify = check;
        check();
      }),
      what,
    );

  await within(socketA.connect(alice, true), 'wss connect A');
  await within(socketB.connect(bob, true), 'wss connect B');
  const snapshot = await within(socketB.followUsers([alice.user_id]), 'follow A');
  const presences = snapshot.presences || [];
  if (!presences.some((p) => p.user_id === alice.user_id && p.status === '')) {
    throw new Error(`snapshot lacks A online: ${JSON.stringify(snapshot)}`);
  }

  await within(socketA.updateStatus('secure and sound'), 'update status');
  await waitEvent('A status join', (e) =>
    (e.joins || []).some((p) => p.user_id === alice.user_id && p.status === 'secure and sound'));

  socketA.disconnect(false);
  await waitEvent('A leave', (e) =>
    (e.leaves || []).some((p) => p.user_id === alice.user_id && p.status === 'secure and sound'));
  socketB.disconnect(false);
}

// ---- the test -------------------------------------------------------------------

function parent() {
  const assert = require('node:assert/strict');
  const { spawn, execFileSync } = require('node:child_process');
  const crypto = require('node:crypto');
  const fs = require('node:fs');
  const net = require('node:net');
  const os = require('node:os');
  const path = require('node:path');
  const { test, after } = require('node:test');

  const sleep = (ms, unref = false) => new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    if (unref) timer.unref();
  });
  const cleanups = [];
  after(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  });

  function freePort() {
    return new Promise((resolve, reject) => {
      const server = net.createServer();
      server.on('error', reject);
      server.listen(0, HOST, () => {
        const { port } = server.address();
        server.close(() => resolve(port));
      });
    });
  }

  /** Runs this file as the client; resolves with { code, output }. */
  function runChild(env) {
    return new Promise((resolve) => {
      const proc = spawn(process.execPath, [__filename], {
        env: { ...process.env, HERALD_TLS_CHILD: '1', ...env },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      const output = [];
      proc.stdout.on('data', (chunk) => output.push(chunk));
      proc.stderr.on('data', (chunk) => output.push(chunk));
      const timer = setTimeout(() => proc.kill('SIGKILL'), 30000);
      proc.on('exit', (code, signal) => {
        clearTimeout(timer);
        resolve({ code, signal, output: Buffer.concat(output).toString() });
      });
    });
  }

  test('nakama-js with useSSL over https:// and wss://', { timeout: 60000 }, async () => {
    const herald = process.env.HERALD_BIN;
    assert.ok(herald, 'set HERALD_BIN to a built herald binary');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-tls-'));
    cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
    const cert = path.join(dir, 'cert.pem');
    const key = path.join(dir, 'key.pem');
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-days', '1', '-subj', '/CN=localhost',
      '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
      '-keyout', key, '-out', cert,
    ], { stdio: 'ignore', timeout: 10000 });

    const port = await freePort();
    const proc = spawn(herald, [
      '--listen', `${HOST}:${port}`, '--data-dir', path.join(dir, 'data'), '--admin-listen', 'off',
      '--tls-cert', cert, '--tls-key', key,
    ], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, RUST_LOG: 'warn' } });
    const stderr = [];
    proc.stderr.on('data', (chunk) => stderr.push(chunk));
    const exited = new Promise((resolve) => proc.on('exit', resolve));
    cleanups.push(async () => {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        if (!(await Promise.race([exited.then(() => true), sleep(5000, true).then(() => false)]))) proc.kill('SIGKILL');
      }
    });
    // Ready once the port accepts TCP (the health check itself needs TLS).
    const deadline = Date.now() + 10000;
    for (;;) {
      const open = await new Promise((resolve) => {
        const socket = net.connect(port, HOST, () => {
          socket.destroy();
          resolve(true);
        });
        socket.on('error', () => resolve(false));
      });
      if (open) break;
      if (proc.exitCode !== null || Date.now() > deadline) {
        assert.fail(`herald did not start:\n${Buffer.concat(stderr).toString()}`);
      }
      await sleep(50);
    }

    const tag = crypto.randomBytes(3).toString('hex');
    for (const host of ['localhost', HOST]) {
      const run = await runChild({ NODE_EXTRA_CA_CERTS: cert, HERALD_PORT: String(port), HERALD_HOST: host, HERALD_TAG: `${tag}${host.length}` });
      assert.equal(run.code, 0, `client via ${host} failed:\n${run.output}\nherald:\n${Buffer.concat(stderr).toString()}`);
    }

    // Without the CA the same client must refuse the certificate.
    const untrusted = await runChild({
      NODE_EXTRA_CA_CERTS: '', HERALD_PORT: String(port), HERALD_HOST: 'localhost', HERALD_TAG: `${tag}u`, HERALD_TLS_AUTH_ONLY: '1',
    });
    assert.notEqual(untrusted.code, 0, 'an untrusted certificate was accepted');
    assert.match(untrusted.output, /SELF_SIGNED|self-signed|certificate/i, untrusted.output);
  });
}
