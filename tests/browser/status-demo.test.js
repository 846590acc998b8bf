'use strict';
// Herald's /status-demo page in headless Debian Chromium (playwright-core):
// page A logs in and sets a status, page B adds A as a friend and shows it,
// A clears and sets again, then A's page closes and B shows A offline.
//
// Needs HERALD_BIN (a built herald) and /usr/bin/chromium (or CHROMIUM_BIN).
// Screenshots go to ARTIFACTS_DIR (default: a new directory under the
// system temp dir); their paths are printed. Every wait is bounded.

const assert = require('node:assert/strict');
const { spawn, execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { test, after } = require('node:test');

const { chromium } = require('playwright-core');

const HOST = '127.0.0.1';
const HERALD_BIN = process.env.HERALD_BIN;
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
/** Bound of every wait for something on a page. */
const WAIT_MS = 10000;
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

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

function httpStatus(port, urlPath) {
  return new Promise((resolve) => {
    const req = http.get({ host: HOST, port, path: urlPath, timeout: 500 }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(0));
  });
}

/** 200 once `port` accepts TCP (a TLS listener cannot answer plain HTTP). */
function tcpOpen(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, HOST, () => {
      socket.destroy();
      resolve(200);
    });
    socket.on('error', () => resolve(0));
  });
}

/** Starts a fresh herald on a free port with its own data dir. */
async function startHerald(extraArgs = [], scheme = 'http') {
  assert.ok(HERALD_BIN, 'set HERALD_BIN to a built herald binary');
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-browser-data-'));
  const port = await freePort();
  const proc = spawn(
    HERALD_BIN,
    ['--listen', `${HOST}:${port}`, '--data-dir', dataDir, '--admin-listen', 'off', ...extraArgs],
    { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, RUST_LOG: 'warn' } },
  );
  const stderr = [];
  proc.stderr.on('data', (chunk) => stderr.push(chunk));
  const exited = new Promise((resolve) => proc.on('exit', resolve));
  cleanups.push(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      const stopped = await Promise.race([exited.then(() => true), sleep(5000, true).then(() => false)]);
      if (!stopped) proc.kill('SIGKILL');
    }
    fs.rmSync(dataDir, { recursive: true, force: true });
  });
  const deadline = Date.now() + 10000;
  while ((await (scheme === 'http' ? httpStatus(port, '/') : tcpOpen(port))) !== 200) {
    if (proc.exitCode !== null || Date.now() > deadline) {
      throw new Error(`herald did not start:\n${Buffer.concat(stderr).toString()}`);
    }
    await sleep(50);
  }
  return { url: `${scheme}://${HOST}:${port}`, log: () => Buffer.concat(stderr).toString() };
}

function artifactsDir() {
  const dir = process.env.ARTIFACTS_DIR || fs.mkdtempSync(path.join(os.tmpdir(), 'herald-browser-artifacts-'));
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

/** A page in its own browser context, failing the test on any script error. */
async function openPage(browser, url, errors) {
  // The TLS test's certificate is self-signed, generated for this run.
  const context = await browser.newContext({ viewport: { width: 900, height: 1000 }, ignoreHTTPSErrors: true });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.on('pageerror', (error) => errors.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') errors.push(`console error: ${message.text()}`);
  });
  const response = await page.goto(`${url}/status-demo`, { timeout: WAIT_MS });
  assert.equal(response.status(), 200);
  return { context, page };
}

async function login(page, customId, username) {
  await page.fill('#custom-id', customId);
  await page.fill('#username', username);
  assert.equal(await page.inputValue('#server-key'), 'defaultkey');
  await page.click('#login');
  await page.waitForSelector('#session', { state: 'visible' });
  await page.waitForFunction(() => document.getElementById('connection').textContent === 'connected');
  return (await page.textContent('#me-id')).trim();
}

/** Waits until the friend row `key` shows `state` (and, if given, `status` text). */
async function waitForFriend(page, key, state, status) {
  await page.waitForFunction(
    ({ key, state, status }) => {
      const row = [...document.querySelectorAll('#friends li')].find((li) => li.dataset.key === key);
      if (!row || row.dataset.state !== state) return false;
      return status === undefined || row.querySelector('.status').textContent.includes(status);
    },
    { key, state, status },
    { timeout: WAIT_MS },
  );
}

async function launch() {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    chromiumSandbox: false,
    args: CHROMIUM_ARGS,
    timeout: 30000,
  });
  cleanups.push(() => browser.close().catch(() => {}));
  return browser;
}

test('two players see each other live in /status-demo', { timeout: 120000 }, async () => {
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing (apt-get install chromium)`);
  const herald = await startHerald();
  const browser = await launch();
  const errors = [];
  const tag = crypto.randomBytes(3).toString('hex');
  const alice = `alice_${tag}`;
  const bob = `bob_${tag}`;

  const dir = artifactsDir();
  // Page A: log in, set a status.
  const a = await openPage(browser, herald.url, errors);
  const shotLogin = path.join(dir, 'status-demo-login.png');
  await a.page.screenshot({ path: shotLogin, fullPage: true });
  console.log(`screenshot (the login form): ${shotLogin}`);
  const aliceId = await login(a.page, `custom-alice-${tag}`, alice);
  await a.page.waitForFunction(() => document.getElementById('my-state').textContent === 'online');
  await a.page.fill('#status-text', 'Playing chess');
  await a.page.click('#set-status');
  await a.page.waitForFunction(() => document.getElementById('my-status').textContent.includes('Playing chess'));

  // Page B: log in, add A by username, see A's status.
  const b = await openPage(browser, herald.url, errors);
  const bobId = await login(b.page, `custom-bob-${tag}`, bob);
  await b.page.fill('#friend', alice);
  await b.page.click('#add-friend');
  await waitForFriend(b.page, alice, 'online', 'Playing chess');
  const row = b.page.locator(`#friends li[data-user-id="${aliceId}"]`);
  assert.equal(await row.count(), 1, 'the friend row learned the user id from the snapshot');

  // A adds B by user id: B is online with no status text.
  await a.page.fill('#friend', bobId);
  await a.page.click('#add-friend');
  await waitForFriend(a.page, bobId, 'online', 'no status text');

  // A changes its status, B sees the change live.
  await a.page.fill('#status-text', 'In a match');
  await a.page.click('#set-status');
  await waitForFriend(b.page, alice, 'online', 'In a match');

  const shotOnline = path.join(dir, 'status-demo-friend-online.png');
  await b.page.screenshot({ path: shotOnline, fullPage: true });
  console.log(`screenshot (B sees A online): ${shotOnline}`);

  // A clears its status (appears offline), then sets one again.
  await a.page.click('#clear-status');
  await a.page.waitForFunction(() => document.getElementById('my-state').textContent === 'offline');
  await waitForFriend(b.page, alice, 'offline');
  await a.page.fill('#status-text', 'Back');
  await a.page.click('#set-status');
  await waitForFriend(b.page, alice, 'online', 'Back');

  // A's page closes: B shows A offline.
  await a.context.close();
  await waitForFriend(b.page, alice, 'offline');
  const text = await b.page.textContent(`#friends li[data-key="${alice}"]`);
  assert.match(text, /Offline/);
  const shotOffline = path.join(dir, 'status-demo-friend-offline.png');
  await b.page.screenshot({ path: shotOffline, fullPage: true });
  console.log(`screenshot (B sees A offline): ${shotOffline}`);

  await b.context.close();
  assert.deepEqual(errors, [], 'no script errors or CSP violations on the page');
  assert.doesNotMatch(herald.log(), /panicked/);
});

test('the page uses https:// and wss:// when herald serves TLS', { timeout: 60000 }, async () => {
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing (apt-get install chromium)`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-browser-tls-'));
  cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
    '-keyout', key, '-out', cert,
  ], { stdio: 'ignore', timeout: 10000 });
  const herald = await startHerald(['--tls-cert', cert, '--tls-key', key], 'https');
  const browser = await launch();
  const errors = [];
  const sockets = [];
  const { context, page } = await openPage(browser, herald.url, errors);
  page.on('websocket', (ws) => sockets.push(ws.url()));
  const tag = crypto.randomBytes(3).toString('hex');
  await login(page, `custom-tls-${tag}`, `tls_${tag}`);
  await page.fill('#status-text', 'Encrypted');
  await page.click('#set-status');
  await page.waitForFunction(() => document.getElementById('my-status').textContent.includes('Encrypted'));
  assert.equal(sockets.length, 1);
  assert.match(sockets[0], /^wss:\/\/127\.0\.0\.1:\d+\/ws\?/);
  await context.close();
  assert.deepEqual(errors, [], 'no script errors or CSP violations on the page');
});
