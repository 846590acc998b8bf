'use strict';
// Protobuf mode (`format=protobuf`, binary frames): the status scenarios
// through nakama-js with WebSocketAdapterPb, then raw-socket checks of the
// bytes (reference §4.3, §11). Runs with 4 shards so that most follow edges
// cross shards.

const assert = require('node:assert/strict');
const crypto = require('node:crypto');

const h = require('./harness');
const { statusScenarios, INVALID_USER_ID, STATUS_TOO_LONG } = require('./scenarios');

const herald = h.useHerald(['--shards', '4'], { mode: 'pb' });
const { test } = herald;

statusScenarios(herald);

// ---- raw protobuf -------------------------------------------------------------------

const F = { cid: 1, error: 11, status: 25, follow: 26, event: 27, unfollow: 28, update: 29, ping: 32, pong: 33 };
const hex = (buf) => Buffer.from(buf).toString('hex');
const cat = (...parts) => Buffer.concat(parts.map((p) => Buffer.from(p)));
const cid = (value) => h.pbField(F.cid, value);
const empty = (number) => h.pbField(number, Buffer.alloc(0));
const stringValue = (text) => h.pbField(1, text);
const update = (status) => h.pbField(F.update, status === undefined ? Buffer.alloc(0) : h.pbField(1, stringValue(status)));
const follow = (ids) => h.pbField(F.follow, cat(...ids.map((id) => h.pbField(1, id))));
const errorBody = (code, message) => cat(code ? [0x08, code] : [], h.pbField(2, message));
const presenceBytes = (p) => cat(h.pbField(1, p.user_id), h.pbField(2, p.session_id), h.pbField(3, p.username), h.pbField(5, p.status === '' ? Buffer.alloc(0) : stringValue(p.status)));

/** Decodes a UserPresence, insisting on the fields Nakama sets. */
function decodePresence(bytes) {
  const fields = h.pbParse(bytes);
  assert.deepEqual(fields.map((f) => f.number), [1, 2, 3, 5], `presence fields: ${hex(bytes)}`);
  const status = h.pbParse(fields[3].value);
  return {
    user_id: fields[0].value.toString(),
    session_id: fields[1].value.toString(),
    username: fields[2].value.toString(),
    status: status.length ? status[0].value.toString() : '',
  };
}

/** Decodes a server frame's envelope: `{cid, member, body}`. */
function decodeEnvelope(frame) {
  assert.equal(frame.isBinary, true, 'protobuf sessions get binary frames');
  const fields = h.pbParse(frame.data);
  const cidField = fields.find((f) => f.number === F.cid);
  const members = fields.filter((f) => f.number !== F.cid);
  assert.ok(members.length <= 1, hex(frame.data));
  return { cid: cidField ? cidField.value.toString() : '', member: members[0]?.number, body: members[0]?.value };
}

function decodeEvent(frame) {
  const envelope = decodeEnvelope(frame);
  assert.equal(envelope.cid, '', 'events carry no cid');
  assert.equal(envelope.member, F.event);
  const fields = h.pbParse(envelope.body);
  return {
    joins: fields.filter((f) => f.number === 2).map((f) => decodePresence(f.value)),
    leaves: fields.filter((f) => f.number === 3).map((f) => decodePresence(f.value)),
    other: fields.filter((f) => f.number !== 2 && f.number !== 3),
  };
}

async function rawPb(ctx, { status = false, prefix = 'pb' } = {}) {
  const session = await ctx.user(prefix);
  const conn = await ctx.raw(`lang=en&status=${status}&token=${encodeURIComponent(session.token)}&format=protobuf`);
  return { session, conn };
}

test('format=protobuf gets binary frames; json or no format gets text frames', async (ctx) => {
  const session = await ctx.user('fmt');
  const token = encodeURIComponent(session.token);
  for (const [format, binary] of [['&format=protobuf', true], ['&format=json', false], ['&format=', false], ['', false]]) {
    const conn = await ctx.raw(`status=true&token=${token}${format}`);
    const first = await conn.next();
    assert.equal(first.isBinary, binary, `format ${format}`);
    conn.close();
  }
});

test('a text frame on a protobuf session closes it', async (ctx) => {
  const { conn } = await rawPb(ctx);
  conn.sendText('{"cid":"1","ping":{}}');
  assert.deepEqual(await conn.closed(), { code: 1000, reason: 'received unexpected WebSocket message type' });
  assert.deepEqual(conn.frames, []);
});

test('exact protobuf bytes of acks, pong, snapshots and errors', async (ctx) => {
  const { conn } = await rawPb(ctx);
  conn.sendBinary(cat(cid('7'), empty(F.ping)));
  assert.equal(hex((await conn.next()).data), '0a01378a0200');
  conn.sendBinary(cat(cid('1'), follow([crypto.randomUUID()])));
  assert.equal(hex((await conn.next()).data), '0a0131ca0100');
  conn.sendBinary(cat(cid('4'), follow(['nope'])));
  assert.equal(hex((await conn.next()).data), hex(cat(cid('4'), h.pbField(F.error, errorBody(3, INVALID_USER_ID)))));
  conn.sendBinary(cat(cid('5'), h.pbField(F.unfollow, h.pbField(1, crypto.randomUUID()))));
  assert.equal(hex((await conn.next()).data), '0a0135');
  // No cid in, no cid out: the ack of a cid-less request is an empty envelope.
  conn.sendBinary(empty(F.unfollow));
  const bare = await conn.next();
  assert.equal(bare.isBinary, true);
  assert.equal(hex(bare.data), '');
  await h.sleep(100);
  assert.equal(conn.frames.length, conn.read, 'nothing else');
});

test('protobuf update: the ack is the bare cid; events encode status "" as a present wrapper', async (ctx) => {
  const { session: a, conn: ac } = await rawPb(ctx, { status: true, prefix: 'pba' });
  const join = decodeEvent(await ac.next());
  assert.equal(join.joins.length, 1);
  assert.deepEqual(join.leaves, []);
  const me = (status) => ({ user_id: a.user_id, session_id: join.joins[0].session_id, username: a.username, status });
  assert.deepEqual(join.joins[0], me(''));
  // The whole event, byte for byte: field 27 { joins = 2 { … status = 5 { } } }.
  assert.equal(hex(ac.frames[0].data), hex(h.pbField(F.event, h.pbField(2, presenceBytes(me(''))))));
  assert.ok(hex(ac.frames[0].data).endsWith('2a00'), 'present-but-empty StringValue is encoded');

  const { conn: bc } = await rawPb(ctx, { prefix: 'pbb' });
  bc.sendBinary(cat(cid('1'), follow([a.user_id])));
  const snapshot = await bc.next();
  assert.equal(hex(snapshot.data), hex(cat(cid('1'), h.pbField(F.status, h.pbField(1, presenceBytes(me('')))))));

  ac.sendBinary(cat(cid('3'), update('hi')));
  const frames = [await ac.next(), await ac.next()];
  const ack = frames.find((f) => decodeEnvelope(f).cid === '3');
  assert.equal(hex(ack.data), '0a0133');
  const expected = hex(h.pbField(F.event, cat(h.pbField(2, presenceBytes(me('hi'))), h.pbField(3, presenceBytes(me(''))))));
  assert.equal(hex(frames.find((f) => f !== ack).data), expected);
  assert.equal(hex((await bc.next()).data), expected);

  // A present wrapper holding "" (bytes 0a 00): online with "".
  ac.sendBinary(cat(cid('5'), update('')));
  assert.deepEqual(decodeEvent(await bc.next()), { joins: [me('')], leaves: [me('hi')], other: [] });
  // No wrapper: offline, a leave only.
  ac.sendBinary(cat(cid('6'), update(undefined)));
  assert.deepEqual(decodeEvent(await bc.next()), { joins: [], leaves: [me('')], other: [] });
  // Each of the two updates gave a an ack and an echo.
  const seen = [];
  for (let i = 0; i < 4; i += 1) seen.push(decodeEnvelope(await ac.next()));
  assert.deepEqual(seen.map((e) => e.cid).filter(Boolean), ['5', '6']);
  // Too long: error 3, nothing sent.
  ac.sendBinary(cat(cid('8'), update('x'.repeat(2049))));
  const error = await ac.next();
  assert.equal(hex(error.data), hex(cat(cid('8'), h.pbField(F.error, errorBody(3, STATUS_TOO_LONG)))));
  await h.sleep(h.QUIET_MS);
  assert.equal(bc.frames.length, bc.read, 'no event for a refused update');
});

test('undecodable protobuf closes with "received malformed payload"', async (ctx) => {
  const session = await ctx.user('bad');
  const token = encodeURIComponent(session.token);
  for (const payload of [
    [0xff, 0xff, 0xff, 0xff],
    [0x0a, 0x05, 0x31], // length past the end
    [0xea, 0x01, 0x03, 0x0a, 0x01], // truncated nested message
    [0x0a], // key without a value
    [...cid('1'), 0xea, 0x01, 0x05, 0x0a, 0x03, 0x0a, 0x01, 0xff], // status "\xff": strings must be UTF-8
  ]) {
    const conn = await ctx.raw(`status=false&token=${token}&format=protobuf`);
    conn.sendBinary(payload);
    assert.deepEqual(await conn.closed(), { code: 1000, reason: 'received malformed payload' }, hex(payload));
    assert.deepEqual(conn.frames, [], hex(payload));
  }
});

test('protobuf envelope without a message: error 2 then close; server-side member: error 1 then close', async (ctx) => {
  const session = await ctx.user('miss');
  const token = encodeURIComponent(session.token);
  const missing = h.pbField(F.error, errorBody(2, 'Missing message.'));
  const unrecognized = h.pbField(F.error, errorBody(1, 'Unrecognized message.'));
  for (const [payload, reply] of [
    [cid('1'), cat(cid('1'), missing)],
    [Buffer.alloc(0), missing],
    [cat(cid('2'), empty(F.status)), cat(cid('2'), unrecognized)],
    [cat(cid('2'), empty(F.event)), cat(cid('2'), unrecognized)],
  ]) {
    const conn = await ctx.raw(`status=false&token=${token}&format=protobuf`);
    conn.sendBinary(payload);
    const closed = await conn.closed();
    assert.deepEqual(closed, { code: 1000, reason: 'error processing message' }, hex(payload));
    assert.deepEqual(conn.frames.map((f) => hex(f.data)), [hex(reply)], hex(payload));
  }
});

test('protobuf: unknown field numbers are skipped, as proto3 does', async (ctx) => {
  const { conn } = await rawPb(ctx);
  const unknownVarint = Buffer.from([0xc0, 0x3e, 0x05]); // field 1000, varint 5
  conn.sendBinary(cat(cid('9'), unknownVarint, h.pbField(999, 'junk'), empty(F.ping)));
  assert.equal(hex((await conn.next()).data), '0a01398a0200');
  assert.ok(conn.isOpen());
});

test('the nakama-js protobuf socket receives binary frames only', async (ctx) => {
  const a = await ctx.connect(await ctx.user('bin'), { status: true });
  await a.update('x');
  assert.ok(a.ws.frames.length >= 3);
  assert.ok(a.ws.frames.every((f) => f.isBinary));
});

test('protobuf: a known field with the wrong wire type is skipped as unknown, as Go does', {
  todo: 'herald difference (documented in src/protocol/protobuf/decode.rs): prost rejects the envelope as malformed',
}, async (ctx) => {
  const session = await ctx.user('wire');
  const token = encodeURIComponent(session.token);
  // ping (field 32) sent as a varint: Go skips it, so the envelope has no message.
  let conn = await ctx.raw(`status=false&token=${token}&format=protobuf`);
  conn.sendBinary(cat(cid('1'), [0x80, 0x02, 0x00]));
  assert.deepEqual(await conn.closed(), { code: 1000, reason: 'error processing message' });
  assert.deepEqual(conn.frames.map((f) => hex(f.data)), [hex(cat(cid('1'), h.pbField(F.error, errorBody(2, 'Missing message.'))))]);
  // cid (field 1) sent as a varint: skipped; the ping is answered without a cid.
  conn = await ctx.raw(`status=false&token=${token}&format=protobuf`);
  conn.sendBinary(cat([0x08, 0x05], empty(F.ping)));
  assert.equal(hex((await conn.next()).data), '8a0200');
});

test('a JSON follower that reads promptly survives a protobuf sender\'s burst of escaped statuses', {
  todo: 'known limitation: a burst (here 400 pipelined updates of ~24 KB JSON events, 9.6 MB) larger than --outgoing-queue-bytes plus the socket buffer, sent faster than a Node follower parses, closes that follower as a slow consumer (with its reason, counted); size the bound to the largest burst',
}, async (ctx) => {
  const { session, conn } = await rawPb(ctx, { prefix: 'burst' });
  const f = await ctx.connect(await ctx.user('f'), { mode: 'json' });
  await f.follow([session.user_id]);
  const status = '\u0001'.repeat(2040);
  for (let i = 0; i < 400; i += 1) conn.sendBinary(cat(cid(String(i)), update(status)));
  await f.unlessClosed(f.next(400, 8000), 8000);
  assert.ok(f.isOpen());
});
