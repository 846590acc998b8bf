'use strict';
// Herald's documented differences from Nakama and its own flags, each on a
// server of its own: --max-follows, token lifetimes, --follow-unknown-ids,
// keepalive, restart, shutdown.

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { test } = require('node:test');

const h = require('./harness');
const { checkError, ev, NIL } = require('./scenarios');

const now = () => Date.now() / 1000;

test('--max-follows N: following past N answers code 3 "Too many follows", follows nothing, socket stays open', () =>
  h.withHerald(['--max-follows', '3'], async (ctx) => {
    const targets = [];
    for (let i = 0; i < 5; i += 1) targets.push(await ctx.connect(await ctx.user(`t${i}`), { status: true }));
    const f = await ctx.connect(await ctx.user('f'));
    assert.equal((await f.follow(targets.slice(0, 2).map((t) => t.userId))).length, 2);
    // 2 followed + 2 new > 3: refused as a whole.
    const error = await h.rejection(f.socket.followUsers([targets[2].userId, targets[3].userId]), 'over the cap');
    checkError(error, 3, 'Too many follows', 'json');
    assert.ok(f.isOpen());
    await targets[3].update('unseen');
    await f.quiet();
    // Re-following what is already followed does not count; the third fits.
    assert.equal((await f.follow(targets.slice(0, 3).map((t) => t.userId))).length, 3);
    checkError(await h.rejection(f.socket.followUsers([targets[4].userId]), 'fourth'), 3, 'Too many follows', 'json');
    // Self does not count.
    assert.equal((await f.follow([f.userId, targets[0].userId])).length, 1);
    // Unfollowing frees room.
    await f.unfollow([targets[0].userId]);
    assert.deepEqual(await f.follow([targets[4].userId]), [targets[4].me('')]);
    await targets[4].update('seen');
    assert.deepEqual(await f.event(), ev([targets[4].me('seen')], [targets[4].me('')]));
  }));

test('tokens last 7200 s and refresh tokens 604800 s by default', () =>
  h.withHerald([], async (ctx) => {
    const session = await ctx.user('life');
    assert.ok(Math.abs(session.expires_at - now() - 7200) <= 5, `expires_at - now = ${session.expires_at - now()}`);
    assert.ok(Math.abs(session.refresh_expires_at - now() - 604800) <= 5);
    const claims = h.claimsOf(session.token);
    assert.ok(Math.abs(claims.exp - claims.iat - 7200) <= 1);
  }));

test('--token-expiry-sec: an expired token cannot connect, but an open socket stays open', () =>
  h.withHerald(['--token-expiry-sec', '2'], async (ctx) => {
    const session = await ctx.user('short');
    assert.ok(session.expires_at - now() <= 2.5);
    const open = await ctx.connect(session, { status: true });
    const { sock: f } = await followerOf(ctx, open);
    await h.waitUntil(() => now() > session.expires_at + 1, 'the token to expire', 5000);
    const res = await h.handshake(ctx.server, `/ws?token=${encodeURIComponent(session.token)}`);
    assert.equal(res.status, 401);
    await open.update('after expiry');
    assert.deepEqual(await f.event(), ev([open.me('after expiry')], [open.me('')]));
  }));

test('--follow-unknown-ids keeps follows of well-formed unknown ids', () =>
  h.withHerald(['--follow-unknown-ids'], async (ctx) => {
    const ext = h.mintToken();
    const f = await ctx.connect(await ctx.user('f'));
    assert.deepEqual(await f.follow([ext.userId, NIL]), []);
    const x = await ctx.connect(h.nakama.Session.restore(ext.token, ''), { status: true });
    assert.deepEqual(await f.event(), ev([x.me('')]));
    await x.update('hello');
    assert.deepEqual(await f.event(), ev([x.me('hello')], [x.me('')]));
    // Malformed ids are still refused.
    const error = await h.rejection(f.socket.followUsers([crypto.randomUUID(), 'nope']), 'malformed id');
    checkError(error, 3, 'Invalid user identifier', 'json');
  }));

test('accounts survive a restart on the same data directory', async () => {
  const fs = require('node:fs');
  const os = require('node:os');
  const path = require('node:path');
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-js-restart-'));
  try {
    const id = h.uid('persist');
    const name = h.uid('keep');
    const first = await h.withHerald([], (ctx) => ctx.client().authenticateCustom(id, true, name), { dataDir });
    const second = await h.withHerald([], async (ctx) => {
      const again = await ctx.client().authenticateCustom(id, true, h.uid('other'));
      // Known users are followable right after the restart.
      const a = await ctx.connect(again, { status: true });
      const f = await ctx.connect(await ctx.user('f'));
      assert.deepEqual(await f.follow([again.user_id]), [a.me('')]);
      const taken = await h.rejection(ctx.client().authenticateCustom(h.uid('thief'), true, name), 'taken');
      assert.equal(taken.status, 409);
      return again;
    }, { dataDir });
    assert.equal(second.created, false);
    assert.equal(second.user_id, first.user_id);
    assert.equal(second.username, name);
  } finally {
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});

test('keepalive: websocket pings; a client that never pongs is closed, pongs keep it open', () =>
  h.withHerald(['--ping-period-sec', '1', '--pong-wait-sec', '3'], async (ctx) => {
    const b = await ctx.connect(await ctx.user('b'));
    await b.update('watched');
    const { sock: f } = await followerOf(ctx, b);
    const token = encodeURIComponent(b.session.token);
    const silent = await ctx.raw(`status=false&token=${token}`, { autoPong: false });
    const unsolicited = await ctx.raw(`status=false&token=${token}`, { autoPong: false });
    const polite = await ctx.raw(`status=false&token=${token}`);
    // Every 20th data message counts as liveness too (as in Nakama).
    const chatty = await ctx.raw(`status=false&token=${token}`, { autoPong: false });
    const chatter = setInterval(() => chatty.sendText('{"ping":{}}'), 40);
    let pings = 0;
    polite.ws.on('ping', () => {
      pings += 1;
    });
    const timer = setInterval(() => unsolicited.ws.pong(), 500);
    try {
      await silent.closed(6000);
      assert.equal(silent.closeInfo.code === 1000 || silent.closeInfo.code === 1006, true, JSON.stringify(silent.closeInfo));
      await h.sleep(1500);
      assert.ok(polite.isOpen(), 'a client answering pings stays open');
      assert.ok(unsolicited.isOpen(), 'unsolicited pongs count as liveness');
      assert.ok(chatty.isOpen(), 'every 20th message counts as liveness');
      assert.ok(pings >= 3, `pings seen: ${pings}`);
      // The nakama-js socket (ws answers pings) is fine too.
      assert.ok(b.isOpen());
    } finally {
      clearInterval(timer);
      clearInterval(chatter);
    }
    assert.deepEqual(f.unread(), []);
  }));

test('a session closed for silence leaves like any other', () =>
  h.withHerald(['--ping-period-sec', '1', '--pong-wait-sec', '2'], async (ctx) => {
    const session = await ctx.user('mute');
    const conn = await ctx.raw(`status=true&token=${encodeURIComponent(session.token)}`, { autoPong: false });
    const join = JSON.parse(await conn.nextText()).status_presence_event.joins[0];
    const f = await ctx.connect(await ctx.user('f'));
    assert.deepEqual(await f.follow([session.user_id]), [join]);
    await conn.closed(5000);
    assert.deepEqual(await f.event(), ev([], [join]));
  }));

test('a follower that stops reading is closed with "session outgoing queue full"; the stream stays valid', () =>
  h.withHerald([], async (ctx) => {
    const b = await ctx.connect(await ctx.user('b'));
    await b.update('start');
    const slowUser = await ctx.user('slow');
    const slow = await ctx.raw(`status=true&token=${encodeURIComponent(slowUser.token)}`);
    const join = JSON.parse(await slow.nextText()).status_presence_event.joins[0];
    const { sock: w } = await followerOf(ctx, { userId: slowUser.user_id });
    slow.sendText(`{"cid":"1","status_follow":{"user_ids":["${b.userId}"]}}`);
    await slow.nextReply();
    // Stop reading; b keeps changing its status until the slow session is cut off.
    slow.ws._socket.pause();
    const filler = 'x'.repeat(2000);
    let sent = 0;
    while (w.events.length === 0) {
      assert.ok(sent < 20000, 'the slow session was never closed');
      const acks = [];
      for (let i = 0; i < 250; i += 1) acks.push(b.socket.updateStatus(`${sent++}:${filler}`));
      await h.within(Promise.all(acks), 8000, 'acks');
    }
    // Its followers see it leave...
    assert.deepEqual(await w.event(), ev([], [join]));
    // ...and once it reads again it gets whole frames, in order, then the close.
    slow.ws._socket.resume();
    assert.deepEqual(await slow.closed(5000), { code: 1000, reason: 'session outgoing queue full' });
    const events = slow.frames.slice(slow.read).map((f) => JSON.parse(f.text).status_presence_event);
    assert.ok(events.length > 0);
    events.forEach((event, i) => assert.equal(event.joins[0].status, `${i}:${filler}`, `event ${i}`));
    assert.ok(b.isOpen(), 'the sender is not affected');
  }));

test('a snapshot larger than --outgoing-queue-bytes is still delivered (Nakama has no snapshot size limit)', () =>
  h.withHerald(['--outgoing-queue-bytes', '65536'], async (ctx) => {
    const targets = [];
    for (let i = 0; i < 40; i += 1) targets.push(await ctx.connect(await ctx.user('t')));
    const status = 's'.repeat(2048);
    await Promise.all(targets.map((t) => t.update(status)));
    const f = await ctx.connect(await ctx.user('f'));
    // About 90 KB of snapshot for one follow request.
    const snapshot = await f.unlessClosed(f.follow(targets.map((t) => t.userId)));
    assert.equal(snapshot.length, 40);
    assert.ok(f.isOpen());
  }));

test('SIGTERM closes every socket with 1001 and exits 0', async () => {
  const server = await h.startHerald([]);
  try {
    const ctx = new h.Ctx(server, 'json');
    const a = await ctx.connect(await ctx.user('a'), { status: true });
    const p = await ctx.connect(await ctx.user('p'), { status: true, mode: 'pb' });
    const exit = await server.stop();
    assert.deepEqual(exit, { code: 0, signal: null });
    for (const sock of [a, p]) {
      const info = await sock.closedByServer();
      assert.equal(info.code, 1001, JSON.stringify(info));
    }
  } finally {
    await server.stop();
  }
});

async function followerOf(ctx, target) {
  const sock = await ctx.connect(await ctx.user('f'));
  const snapshot = await sock.follow([target.userId]);
  return { sock, snapshot };
}
