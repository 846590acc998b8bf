'use strict';
// JSON mode: the status feature through nakama-js, REST through nakama-js,
// and raw-socket checks of what nakama-js cannot express (reference §2, §3,
// §4, §5, §9).

const assert = require('node:assert/strict');
const crypto = require('node:crypto');

const h = require('./harness');
const { statusScenarios, TRICKY, INVALID_USER_ID, STATUS_TOO_LONG } = require('./scenarios');

const herald = h.useHerald([], { mode: 'json' });
const { test } = herald;

statusScenarios(herald);

// ---- REST: authenticate, refresh, CORS -------------------------------------------

/** The grpc-gateway error a nakama-js REST call rejects with (it throws the Response). */
async function restError(promise, what) {
  const response = await h.rejection(promise, what);
  assert.equal(typeof response.status, 'number', `expected an HTTP response, got ${response}`);
  return { status: response.status, body: await response.json() };
}

test('authenticateCustom: created, then existing (username ignored), vars in the token', async (ctx) => {
  const client = ctx.client();
  const id = h.uid('custom');
  const name = h.uid('alice');
  const first = await client.authenticateCustom(id, true, name, { k1: 'v1' });
  assert.equal(first.created, true);
  assert.equal(first.username, name);
  assert.match(first.user_id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.deepEqual(first.vars, { k1: 'v1' });
  const claims = h.claimsOf(first.token);
  assert.deepEqual(Object.keys(claims), ['tid', 'uid', 'usn', 'vrs', 'exp', 'iat']);
  assert.equal(h.claimsOf(first.refresh_token).tid, claims.tid);

  const again = await client.authenticateCustom(id, true, h.uid('other'));
  assert.equal(again.created, false);
  assert.equal(again.user_id, first.user_id);
  assert.equal(again.username, name);
  assert.deepEqual(Object.keys(h.claimsOf(again.token)), ['tid', 'uid', 'usn', 'exp', 'iat'], 'empty vrs is omitted');
  // create=false finds the existing account.
  const found = await client.authenticateCustom(id, false);
  assert.equal(found.user_id, first.user_id);
  assert.equal(found.created, false);
  // Without a username one of 10 letters is generated.
  const generated = await client.authenticateCustom(h.uid('gen'), true);
  assert.match(generated.username, /^[A-Za-z]{10}$/);
});

test('authenticateDevice: created, then existing', async (ctx) => {
  const client = ctx.client();
  const id = `device-${crypto.randomUUID()}`;
  const name = h.uid('dev');
  const first = await client.authenticateDevice(id, true, name);
  assert.equal(first.created, true);
  assert.equal(first.username, name);
  const again = await client.authenticateDevice(id, true);
  assert.equal(again.created, false);
  assert.equal(again.user_id, first.user_id);
  assert.equal(again.username, name);
  // A device id and a custom id with the same text are different accounts.
  const custom = await client.authenticateCustom(id, true);
  assert.notEqual(custom.user_id, first.user_id);
});

test('authenticate with create=false and an unknown id → 404', async (ctx) => {
  const client = ctx.client();
  const notFound = { status: 404, body: { code: 5, message: 'User account not found.' } };
  assert.deepEqual(await restError(client.authenticateCustom(h.uid('nobody'), false), 'custom'), notFound);
  assert.deepEqual(await restError(client.authenticateDevice(h.uid('nodevice00'), false), 'device'), notFound);
});

test('authenticate with a username already taken → 409', async (ctx) => {
  const client = ctx.client();
  const name = h.uid('taken');
  await client.authenticateCustom(h.uid('owner'), true, name);
  const taken = { status: 409, body: { code: 6, message: 'Username is already in use.' } };
  assert.deepEqual(await restError(client.authenticateCustom(h.uid('second'), true, name), 'custom'), taken);
  assert.deepEqual(await restError(client.authenticateDevice(h.uid('seconddevice'), true, name), 'device'), taken);
});

test('authenticate id rules: custom 6-128 bytes, device 10-128 bytes, no spaces', async (ctx) => {
  const client = ctx.client();
  const bad = (message) => ({ status: 400, body: { code: 3, message } });
  const customLength = bad('Custom ID invalid, must be 6-128 bytes.');
  const deviceLength = bad('Device ID invalid, must be 10-128 bytes.');
  assert.deepEqual(await restError(client.authenticateCustom('abcde', true), '5 bytes'), customLength);
  assert.deepEqual(await restError(client.authenticateCustom('a'.repeat(129), true), '129 bytes'), customLength);
  // Lengths are bytes: three 2-byte characters are a valid 6-byte id.
  assert.equal((await client.authenticateCustom('ééé', true)).created, true);
  assert.deepEqual(await restError(client.authenticateCustom('has space', true), 'space'), bad('Custom ID invalid, no spaces or control characters allowed.'));
  assert.deepEqual(await restError(client.authenticateCustom('', true), 'empty'), bad('Custom ID is required.'));
  assert.deepEqual(await restError(client.authenticateDevice('a'.repeat(9), true), '9 bytes'), deviceLength);
  assert.deepEqual(await restError(client.authenticateDevice('a'.repeat(129), true), '129 bytes'), deviceLength);
  assert.deepEqual(await restError(client.authenticateDevice('tab\there12', true), 'tab'), bad('Device ID invalid, no spaces or control characters allowed.'));
  // Usernames: 1-128 bytes, no control characters; spaces are allowed.
  assert.deepEqual(await restError(client.authenticateCustom(h.uid('longname'), true, 'n'.repeat(129)), 'long username'), bad('Username invalid, must be 1-128 bytes.'));
  assert.deepEqual(await restError(client.authenticateCustom(h.uid('ctrlname'), true, 'a\u0001b'), 'control'), bad('Username invalid, no spaces or control characters allowed.'));
  const spaced = `${h.uid('first')} last`;
  assert.equal((await client.authenticateCustom(h.uid('spaced'), true, spaced)).username, spaced);
  // The bounds themselves are fine.
  const suffix = crypto.randomBytes(8).toString('hex');
  assert.equal((await client.authenticateCustom(`c${suffix}`.slice(0, 6), true)).created, true);
  assert.equal((await client.authenticateCustom(`c${suffix}`.padEnd(128, 'x'), true)).created, true);
  assert.equal((await client.authenticateDevice(`d${suffix}`.slice(0, 10), true)).created, true);
  assert.equal((await client.authenticateDevice(`d${suffix}`.padEnd(128, 'y'), true)).created, true);
});

test('sessionRefresh: a new session for the same user, same token id; bad refresh token → 401', async (ctx) => {
  const client = ctx.client();
  const session = await ctx.user('r');
  const before = { user_id: session.user_id, username: session.username, token: session.token };
  const warnings = [];
  const warn = console.warn;
  console.warn = (...args) => warnings.push(args.join(' '));
  let refreshed;
  try {
    refreshed = await client.sessionRefresh(session);
  } finally {
    console.warn = warn;
  }
  assert.deepEqual(warnings, [], 'token lifetimes long enough for nakama-js');
  assert.equal(refreshed.user_id, before.user_id);
  assert.equal(refreshed.username, before.username);
  assert.equal(h.claimsOf(refreshed.token).tid, h.claimsOf(before.token).tid);
  assert.ok(refreshed.expires_at >= h.claimsOf(before.token).exp);
  // The refreshed token opens a socket.
  const sock = await ctx.connect(refreshed, { status: true });
  assert.equal(sock.events.length, 1);
  // Vars given to the refresh go into the new tokens.
  const withVars = await client.sessionRefresh(session, { k2: 'v2' });
  assert.deepEqual(withVars.vars, { k2: 'v2' });
  assert.deepEqual(h.claimsOf(withVars.refresh_token).vrs, { k2: 'v2' });

  // A session token is not a refresh token (different key).
  const bogus = h.nakama.Session.restore(session.token, session.token);
  const response = await h.rejection(client.sessionRefresh(bogus), 'refresh with a session token');
  assert.equal(response.status, 401);
  assert.deepEqual(await response.json(), { code: 16, message: 'Refresh token invalid or expired.' });
});

test('REST with a wrong server key → 401', async (ctx) => {
  const client = new h.nakama.Client('wrongkey', h.HOST, String(ctx.server.port), false, 7000, false);
  const response = await h.rejection(client.authenticateCustom(h.uid('key'), true), 'wrong key');
  assert.equal(response.status, 401);
  assert.equal(response.headers.get('www-authenticate'), 'Server key invalid');
  assert.deepEqual(await response.json(), { code: 16, message: 'Server key invalid' });
  const missing = await h.request(ctx.server, 'POST', '/v2/account/authenticate/custom', { body: JSON.stringify({ id: h.uid('nokey') }) });
  assert.equal(missing.status, 401);
  assert.deepEqual(JSON.parse(missing.body), { code: 16, message: 'Server key required' });
});

test('CORS: OPTIONS preflight answered, Access-Control-Allow-Origin: * on responses', async (ctx) => {
  const preflight = await h.request(ctx.server, 'OPTIONS', '/v2/account/authenticate/custom?create=true', {
    headers: {
      Origin: 'http://example.com',
      'Access-Control-Request-Method': 'POST',
      'Access-Control-Request-Headers': 'authorization,content-type',
    },
  });
  assert.ok(preflight.status >= 200 && preflight.status < 300, `preflight status ${preflight.status}`);
  assert.equal(preflight.headers['access-control-allow-origin'], '*');
  const allowed = (preflight.headers['access-control-allow-headers'] || '').toLowerCase();
  assert.ok(allowed.includes('authorization') && allowed.includes('content-type'), `allowed headers: ${allowed}`);
  const methods = preflight.headers['access-control-allow-methods'];
  assert.ok(methods === undefined || methods.includes('POST'), `allowed methods: ${methods}`);

  const basic = `Basic ${Buffer.from('defaultkey:').toString('base64')}`;
  const accountBody = JSON.stringify({ id: h.uid('cors'), vars: {} });
  const auth = await h.request(ctx.server, 'POST', '/v2/account/authenticate/custom?create=true&', {
    headers: { Origin: 'http://example.com', Authorization: basic, 'Content-Type': 'application/json' },
    body: accountBody,
  });
  assert.equal(auth.status, 200);
  assert.equal(auth.headers['access-control-allow-origin'], '*');
  assert.deepEqual(Object.keys(JSON.parse(auth.body)), ['created', 'token', 'refresh_token']);
  assert.match(auth.headers['content-type'], /^application\/json/);
  // An existing account: `created` (false) is omitted.
  const again = await h.request(ctx.server, 'POST', '/v2/account/authenticate/custom?create=true&', {
    headers: { Authorization: basic, 'Content-Type': 'application/json' },
    body: accountBody,
  });
  assert.equal(again.status, 200);
  assert.deepEqual(Object.keys(JSON.parse(again.body)), ['token', 'refresh_token']);
  const refused = await h.request(ctx.server, 'POST', '/v2/account/authenticate/custom', {
    headers: { Origin: 'http://example.com' },
    body: '{}',
  });
  assert.equal(refused.status, 401);
  assert.equal(refused.headers['access-control-allow-origin'], '*');
  const root = await h.request(ctx.server, 'GET', '/', { headers: { Origin: 'http://example.com' } });
  assert.equal(root.status, 200);
  assert.equal(root.body, '');
  assert.equal(root.headers['access-control-allow-origin'], '*');
});

// ---- raw sockets: the handshake ------------------------------------------------------

test('handshake: format must be "", json or protobuf (400 otherwise, before the token)', async (ctx) => {
  const session = await ctx.user('fmt');
  const token = encodeURIComponent(session.token);
  for (const format of ['xml', 'JSON', 'Protobuf', 'proto']) {
    const res = await h.handshake(ctx.server, `/ws?lang=en&status=true&token=${token}&format=${format}`);
    assert.equal(res.status, 400, `format=${format}`);
    assert.equal(res.body.trim(), 'Invalid format parameter');
  }
  const noToken = await h.handshake(ctx.server, '/ws?format=xml');
  assert.equal(noToken.status, 400);
  for (const format of ['', 'json', 'protobuf']) {
    const res = await h.handshake(ctx.server, `/ws?token=${token}&format=${format}`);
    assert.equal(res.status, 101, `format=${format}`);
  }
});

test('handshake: missing, bad or expired token → 401 before the upgrade', async (ctx) => {
  const session = await ctx.user('tok');
  const expired = h.mintToken({ exp: Math.floor(Date.now() / 1000) - 1 });
  const wrongKey = h.mintToken({ key: 'someotherkey' });
  const none = h.mintToken({ header: { alg: 'none', typ: 'JWT' } });
  const noExp = h.mintToken({ omitExp: true });
  const badUid = h.mintToken({ userId: 'not-a-uuid' });
  const cases = {
    missing: '/ws?lang=en&status=true',
    empty: '/ws?token=',
    garbage: '/ws?token=abc.def.ghi',
    truncated: `/ws?token=${session.token.slice(0, -3)}`,
    expired: `/ws?token=${expired.token}`,
    wrongKey: `/ws?token=${wrongKey.token}`,
    algNone: `/ws?token=${none.token}`,
    noExp: `/ws?token=${noExp.token}`,
    badUid: `/ws?token=${badUid.token}`,
    refreshToken: `/ws?token=${session.refresh_token}`,
  };
  for (const [name, path] of Object.entries(cases)) {
    const res = await h.handshake(ctx.server, path);
    assert.equal(res.status, 401, name);
    assert.equal(res.body.trim(), 'Missing or invalid token', name);
  }
});

test('handshake: Authorization: Bearer is accepted and takes precedence over ?token', async (ctx) => {
  const session = await ctx.user('bearer');
  const good = encodeURIComponent(session.token);
  assert.equal((await h.handshake(ctx.server, '/ws?status=true', { Authorization: `Bearer ${session.token}` })).status, 101);
  const wrongHeader = await h.handshake(ctx.server, `/ws?token=${good}`, { Authorization: 'Bearer nonsense' });
  assert.equal(wrongHeader.status, 401);
  const notBearer = await h.handshake(ctx.server, `/ws?token=${good}`, { Authorization: `Basic ${Buffer.from('defaultkey:').toString('base64')}` });
  assert.equal(notBearer.status, 401);
  // A socket opened with the header works.
  const conn = await ctx.raw('status=true', { headers: { Authorization: `Bearer ${session.token}` } });
  const join = await conn.nextJson();
  assert.equal(join.status_presence_event.joins[0].user_id, session.user_id);
});

test('handshake: status parsed like Go ParseBool; lang ignored; no permessage-deflate', async (ctx) => {
  const session = await ctx.user('pb');
  const token = encodeURIComponent(session.token);
  for (const [value, online] of [
    ['true', true], ['True', true], ['TRUE', true], ['t', true], ['T', true], ['1', true],
    ['false', false], ['0', false], ['yes', false], ['on', false], ['tRUE', false], ['', false],
  ]) {
    const conn = await ctx.raw(`lang=xx&status=${value}&token=${token}`);
    assert.equal(conn.ws.extensions, '', 'no extension is negotiated');
    conn.sendText('{"ping":{},"cid":"p"}');
    // The previous connection's close is processed asynchronously: if the
    // server gets to it after this session is registered, this session (which
    // follows its own user) rightly sees that session leave. Skip those.
    const next = async () => {
      for (let i = 0; i < 20; i += 1) {
        const message = await conn.nextJson();
        const event = message.status_presence_event;
        if (!event || (event.joins || []).length > 0) return message;
        for (const leave of event.leaves) assert.equal(leave.user_id, session.user_id);
      }
      throw new Error('only leaves');
    };
    // The own join (if any) is queued at connect, before the pong.
    const first = await next();
    if (online) {
      assert.ok(first.status_presence_event, `status=${value}: ${JSON.stringify(first)}`);
      assert.deepEqual(await next(), { cid: 'p', pong: {} });
    } else {
      assert.deepEqual(first, { cid: 'p', pong: {} }, `status=${value}`);
    }
    conn.close();
  }
});

// ---- raw sockets: JSON input rules -------------------------------------------------

/** A raw JSON socket of a fresh user (status=false unless asked). */
async function rawUser(ctx, { status = false, prefix = 'raw' } = {}) {
  const session = await ctx.user(prefix);
  const conn = await ctx.raw(`status=${status}&token=${encodeURIComponent(session.token)}`);
  return { session, conn };
}

test('camelCase input (as nakama-cpp sends) is accepted', async (ctx) => {
  const { session: b, conn: bc } = await rawUser(ctx, { status: true, prefix: 'camelb' });
  await bc.nextJson(); // own join
  const { conn } = await rawUser(ctx, { prefix: 'camel' });
  conn.sendText(`{"cid":"1","statusFollow":{"userIds":["${b.user_id}"]}}`);
  const snapshot = JSON.parse(await conn.nextReply());
  assert.equal(snapshot.cid, '1');
  assert.equal(snapshot.status.presences[0].user_id, b.user_id);
  conn.sendText('{"statusUpdate":{"status":"x"},"cid":"2"}');
  const { reply, event: echo } = await conn.replyAndEvent();
  assert.equal(reply, '{"cid":"2"}');
  assert.equal(echo.status_presence_event.joins[0].status, 'x');
  bc.sendText('{"status_update":{"status":"camel"},"cid":"9"}');
  const event = await conn.nextJson();
  assert.equal(event.status_presence_event.joins[0].status, 'camel');
  conn.sendText(`{"cid":"3","statusUnfollow":{"userIds":["${b.user_id}"]}}`);
  assert.equal(await conn.nextReply(), '{"cid":"3"}');
  // snake_case outer, camelCase inner: each field by either name.
  conn.sendText(`{"cid":"4","status_follow":{"userIds":["${b.user_id}"]}}`);
  assert.equal(JSON.parse(await conn.nextReply()).status.presences[0].status, 'camel');
  // "status": null is an absent wrapper: go offline.
  conn.sendText('{"cid":"5","status_update":{"status":null}}');
  const offline = await conn.replyAndEvent();
  assert.equal(offline.reply, '{"cid":"5"}');
  assert.deepEqual(Object.keys(offline.event.status_presence_event), ['leaves']);
  assert.ok(conn.isOpen());
});

test('malformed input closes with 1000 "received malformed payload" and no error envelope', async (ctx) => {
  const session = await ctx.user('mal');
  const token = encodeURIComponent(session.token);
  const payloads = [
    'hello',
    '',
    '[]',
    'null',
    '{"cid":1}',
    '{"cid":"1","bogus":{}}',
    '{"cid":"1","status_update":{"status":"x","extra":1}}',
    '{"cid":"1","status_follow":{"user_ids":[],"bogus":1}}',
    '{"cid":"1","ping":{},"pong":{}}',
    '{"cid":"1","status_update":{"status":5}}',
    '{"cid":"1","status_update":{"status":{"value":"x"}}}',
    '{"cid":"1","status_update":{},"statusUpdate":{}}',
    '{"cid":"1","status_follow":{"user_ids":"abc"}}',
    '{"cid":"1","status_follow":{"user_ids":[1]}}',
    '{"cid":"1","ping":{}} x',
    '{"cid":"1","ping":{}',
  ];
  for (const payload of payloads) {
    const conn = await ctx.raw(`status=false&token=${token}`);
    conn.sendText(payload);
    const closed = await conn.closed();
    assert.deepEqual(closed, { code: 1000, reason: 'received malformed payload' }, `payload ${JSON.stringify(payload)}`);
    assert.deepEqual(conn.frames.map((f) => f.text), [], `no envelope for ${JSON.stringify(payload)}`);
  }
});

// Herald checks UTF-8 as RFC 6455 requires and closes with 1007 (a deliberate
// difference: Nakama's gorilla does not check, and closes with 1000
// "received malformed payload" once the JSON decoder fails).
test('a text message that is not UTF-8 closes with 1007', async (ctx) => {
  const session = await ctx.user('utf');
  const token = encodeURIComponent(session.token);
  for (const bytes of [
    Buffer.concat([Buffer.from('{"cid":"1","status_update":{"status":"'), Buffer.from([0xff]), Buffer.from('"}}')]),
    Buffer.from([0xc3, 0x28]),
  ]) {
    const conn = await ctx.raw(`status=false&token=${token}`);
    conn.ws.send(bytes, { binary: false });
    assert.equal((await conn.closed()).code, 1007, bytes.toString('hex'));
    assert.deepEqual(conn.frames, []);
  }
});

test('a close frame whose reason is not UTF-8 closes with 1007', async (ctx) => {
  const { conn } = await rawUser(ctx, { prefix: 'cls' });
  // A masked close frame: code 1000, reason 0xff (ws itself refuses to send this).
  const mask = [1, 2, 3, 4];
  const payload = [0x03, 0xe8, 0xff];
  conn.ws._socket.write(Buffer.from([0x88, 0x80 | payload.length, ...mask, ...payload.map((b, i) => b ^ mask[i % 4])]));
  const closed = await conn.closed();
  assert.equal(closed.code, 1007);
});

test('an envelope without a message: error 2 "Missing message." then close', async (ctx) => {
  const session = await ctx.user('miss');
  const token = encodeURIComponent(session.token);
  for (const [payload, reply] of [
    ['{"cid":"1"}', '{"cid":"1","error":{"code":2,"message":"Missing message."}}'],
    ['{"cid":"7","status_update":null}', '{"cid":"7","error":{"code":2,"message":"Missing message."}}'],
    ['{}', '{"error":{"code":2,"message":"Missing message."}}'],
  ]) {
    const conn = await ctx.raw(`status=false&token=${token}`);
    conn.sendText(payload);
    const closed = await conn.closed();
    assert.equal(closed.code, 1000, payload);
    assert.equal(closed.reason, 'error processing message', payload);
    assert.deepEqual(conn.frames.map((f) => f.text), [reply], payload);
  }
});

test('a server-to-client message sent by the client: error 1 "Unrecognized message." then close', async (ctx) => {
  const session = await ctx.user('unrec');
  const token = encodeURIComponent(session.token);
  for (const payload of [
    '{"cid":"2","status":{}}',
    '{"cid":"2","status_presence_event":{}}',
    '{"cid":"2","error":{"code":1,"message":"x"}}',
  ]) {
    const conn = await ctx.raw(`status=false&token=${token}`);
    conn.sendText(payload);
    const closed = await conn.closed();
    assert.equal(closed.code, 1000, payload);
    assert.deepEqual(conn.frames.map((f) => f.text), ['{"cid":"2","error":{"code":1,"message":"Unrecognized message."}}'], payload);
  }
});

test('a binary frame on a JSON session closes it: "received unexpected WebSocket message type"', async (ctx) => {
  const { conn } = await rawUser(ctx, { prefix: 'bin' });
  conn.sendBinary(Buffer.from('{"cid":"1","ping":{}}'));
  assert.deepEqual(await conn.closed(), { code: 1000, reason: 'received unexpected WebSocket message type' });
  assert.deepEqual(conn.frames, []);
});

test('message size: 4096 bytes are read, 4097 close with 1009', async (ctx) => {
  const { conn } = await rawUser(ctx, { prefix: 'big' });
  const envelope = (n) => `{"cid":"1","status_update":{"status":"${'a'.repeat(n)}"}}`;
  const overhead = envelope(0).length;
  conn.sendText(envelope(4096 - overhead));
  assert.equal(await conn.nextReply(), `{"cid":"1","error":{"code":3,"message":"${STATUS_TOO_LONG}"}}`);
  assert.ok(conn.isOpen());
  conn.sendText(envelope(4097 - overhead));
  const closed = await conn.closed();
  assert.equal(closed.code, 1009);
  assert.equal(conn.frames.length, 1);
});

test('fragmented messages are reassembled; websocket pings are answered; a client close is echoed', async (ctx) => {
  const { conn } = await rawUser(ctx, { prefix: 'frag' });
  const text = '{"cid":"f1","ping":{}}';
  conn.ws.send(text.slice(0, 7), { fin: false });
  conn.ws.send(text.slice(7, 15), { fin: false });
  conn.ws.send(text.slice(15), { fin: true });
  assert.equal(await conn.nextText(), '{"cid":"f1","pong":{}}');
  const pong = new Promise((resolve) => conn.ws.once('pong', (data) => resolve(data.toString())));
  conn.ws.ping('hb');
  assert.equal(await h.within(pong, h.WAIT_MS, 'websocket pong'), 'hb');
  conn.ws.close(4000, 'bye');
  const closed = await conn.closed();
  assert.equal(closed.code, 4000);
});

test('exact JSON: compact, snake_case, field order, omitted empties but the snapshot list, Go string escaping', async (ctx) => {
  const { session: a, conn: ac } = await rawUser(ctx, { status: true, prefix: 'exa' });
  const join = await ac.nextText();
  const sa = JSON.parse(join).status_presence_event.joins[0].session_id;
  const p = (status) => `{"user_id":"${a.user_id}","session_id":"${sa}","username":"${a.username}","status":${goString(status)}}`;
  assert.equal(join, `{"status_presence_event":{"joins":[${p('')}]}}`);

  const { conn: bc } = await rawUser(ctx, { prefix: 'exb' });
  bc.sendText(`{"status_follow":{"user_ids":["${a.user_id}"]},"cid":"1"}`);
  assert.equal(await bc.nextText(), `{"cid":"1","status":{"presences":[${p('')}]}}`);
  bc.sendText(`{"status_follow":{"user_ids":["${crypto.randomUUID()}"]},"cid":"2"}`);
  // Unlike Nakama's {}, an empty snapshot keeps its list (Godot requires it).
  assert.equal(await bc.nextText(), '{"cid":"2","status":{"presences":[]}}');

  ac.sendText(`{"status_update":{"status":${JSON.stringify(TRICKY)}},"cid":"a1"}`);
  assert.equal(await ac.nextReply(), '{"cid":"a1"}');
  const update = `{"status_presence_event":{"joins":[${p(TRICKY)}],"leaves":[${p('')}]}}`;
  assert.equal(await bc.nextText(), update);
  ac.sendText('{"status_update":{},"cid":"a2"}');
  assert.equal(await bc.nextText(), `{"status_presence_event":{"leaves":[${p(TRICKY)}]}}`);

  bc.sendText('{"status_follow":{"user_ids":["nope"]},"cid":"3"}');
  assert.equal(await bc.nextText(), `{"cid":"3","error":{"code":3,"message":"${INVALID_USER_ID}"}}`);
  bc.sendText('{"ping":{},"cid":"4"}');
  assert.equal(await bc.nextText(), '{"cid":"4","pong":{}}');
  bc.sendText('{"cid":"5","status_unfollow":{"user_ids":[]}}');
  assert.equal(await bc.nextText(), '{"cid":"5"}');
  // No cid in, no cid out: an ack is then an empty object.
  bc.sendText('{"ping":{}}');
  assert.equal(await bc.nextText(), '{"pong":{}}');
  bc.sendText('{"status_unfollow":{}}');
  assert.equal(await bc.nextText(), '{}');
  // cids are echoed verbatim, whatever they are.
  bc.sendText('{"cid":"x y\\"é😀","ping":{}}');
  assert.equal(await bc.nextText(), '{"cid":"x y\\"é😀","pong":{}}');
});

test('status_update ack is exactly {"cid":"3"}; events never carry a cid', async (ctx) => {
  const { conn } = await rawUser(ctx, { prefix: 'ack' });
  conn.sendText('{"cid":"3","status_update":{"status":"x"}}');
  const { reply, event } = await conn.replyAndEvent();
  assert.equal(reply, '{"cid":"3"}');
  assert.deepEqual(Object.keys(event), ['status_presence_event']);
});

test('follow by username (as .NET and Godot can send): resolved, self skipped, "" rejected', async (ctx) => {
  const { session: a, conn: ac } = await rawUser(ctx, { status: true, prefix: 'una' });
  await ac.nextText();
  const { session: b, conn: bc } = await rawUser(ctx, { prefix: 'unb' });
  bc.sendText(`{"cid":"1","status_follow":{"user_ids":["${a.user_id}"],"usernames":["${a.username}","${b.username}","nosuchname"]}}`);
  const snapshot = JSON.parse(await bc.nextReply());
  assert.equal(snapshot.status.presences.length, 1, JSON.stringify(snapshot));
  assert.equal(snapshot.status.presences[0].user_id, a.user_id);
  bc.sendText('{"cid":"2","status_follow":{"usernames":["x",""]}}');
  assert.equal(await bc.nextReply(), '{"cid":"2","error":{"code":3,"message":"Invalid username"}}');
  // Followed by name: events arrive.
  const { conn: cc } = await rawUser(ctx, { prefix: 'unc' });
  cc.sendText(`{"cid":"1","status_follow":{"usernames":["${a.username}"]}}`);
  assert.equal(JSON.parse(await cc.nextReply()).status.presences[0].user_id, a.user_id);
  ac.sendText('{"cid":"9","status_update":{"status":"by name"}}');
  const event = await cc.nextJson();
  assert.equal(event.status_presence_event.joins[0].status, 'by name');
  assert.equal((await bc.nextJson()).status_presence_event.joins[0].status, 'by name');
});

test('usernames needing escapes: Go-escaped in the token, protojson-escaped in presences', async (ctx) => {
  const basic = `Basic ${Buffer.from('defaultkey:').toString('base64')}`;
  const name = `a"b\\c<d>&é 😀\u2028${h.uid('w')}`;
  const res = await h.request(ctx.server, 'POST', `/v2/account/authenticate/custom?create=true&username=${encodeURIComponent(name)}`, {
    headers: { Authorization: basic, 'Content-Type': 'application/json' },
    body: JSON.stringify({ id: h.uid('weird') }),
  });
  assert.equal(res.status, 200, res.body);
  const { token } = JSON.parse(res.body);
  const payload = Buffer.from(token.split('.')[1], 'base64url').toString('utf8');
  assert.ok(payload.includes('"usn":"a\\"b\\\\c\\u003cd\\u003e\\u0026é 😀\\u2028'), payload);
  assert.equal(JSON.parse(payload).usn, name);
  const conn = await ctx.raw(`status=true&token=${encodeURIComponent(token)}`);
  const text = await conn.nextText();
  assert.ok(text.includes(`"username":${goString(name)},"status":""`), text);
});

test('an abrupt TCP close is a disconnect: followers get the leave', async (ctx) => {
  const { session, conn } = await rawUser(ctx, { status: true, prefix: 'abrupt' });
  const join = (await conn.nextJson()).status_presence_event.joins[0];
  const f = await ctx.connect(await ctx.user('f'));
  assert.deepEqual(await f.follow([session.user_id]), [join]);
  conn.ws._socket.destroy();
  assert.deepEqual(h.norm(await f.event()), { joins: [], leaves: [join] });
});

/** A JSON string literal as Go protojson writes it (reference §3.1). */
function goString(text) {
  let out = '"';
  for (const ch of text) {
    const code = ch.codePointAt(0);
    if (ch === '"' || ch === '\\') out += `\\${ch}`;
    else if (ch === '\b') out += '\\b';
    else if (ch === '\f') out += '\\f';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (code < 0x20) out += `\\u${code.toString(16).padStart(4, '0')}`;
    else out += ch;
  }
  return `${out}"`;
}
