'use strict';
// Cluster mode, checks across nodes that the shared status scenarios do not
// make, through nakama-js (JSON unless a test says otherwise) on 3 herald
// nodes sharing one nats-server and one Postgres: one user's devices on
// different nodes, appearing offline and erasure on disconnect seen from
// other nodes, follows by username and of unknown ids, --max-follows and
// --single-socket (each on a cluster of its own), and the backend API
// answering for sessions on other nodes. Sockets are pinned to nodes
// (`{node: i}`) wherever the test is about where they are.

const assert = require('node:assert/strict');
const crypto = require('node:crypto');

const h = require('./harness');
const { useCluster, withCluster } = require('./cluster');
const { checkError, ev } = require('./scenarios');

const herald = useCluster([], { mode: 'json', nodes: 3 });
const { test } = herald;

/** `GET /v2/status` on `node` for `ids`: the parsed `users`, sessions sorted. */
async function statusOn(ctx, node, ids) {
  const res = await ctx.admin(node, 'GET', `/v2/status?user_ids=${ids.join(',')}`);
  assert.equal(res.status, 200, res.body);
  return JSON.parse(res.body).users.map((user) => ({
    ...user,
    sessions: [...user.sessions].sort((a, b) => (a.session_id < b.session_id ? -1 : 1)),
  }));
}

/** What `GET /v2/status` should say of a user with these sessions (socks with a status). */
function expectedStatus(userId, entries) {
  const sessions = entries
    .map(([sock, status]) => ({ session_id: sock.sessionId, status }))
    .sort((a, b) => (a.session_id < b.session_id ? -1 : 1));
  return { user_id: userId, online: sessions.length > 0, sessions };
}

/** A follower of `targets` on `node`. */
async function followerOn(ctx, node, targets, mode) {
  const sock = await ctx.connect(await ctx.user('f'), { node, mode });
  const snapshot = await sock.follow(targets.map((t) => t.userId || t.user_id || t));
  return { sock, snapshot };
}

/** Retries the async assertion `check` until it passes or `timeout` ms pass (then throws its error). */
async function eventually(check, what, timeout = 3000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    try {
      return await check();
    } catch (error) {
      if (Date.now() >= deadline) {
        error.message = `${what}, still failing after ${timeout} ms: ${error.message}`;
        throw error;
      }
      await h.sleep(25);
    }
  }
}

test('one user, a device on each node: every device sees the others, a follower sees them all', async (ctx) => {
  const user = await ctx.user('multi');
  // A node loads a user's presences when the user's first socket there
  // opens; a change another device makes while that load runs is in the
  // loaded state but reaches the new socket as no event. With status=true,
  // connect returns once the device's own join came back, after the load,
  // so every later change is an event for it.
  const d0 = await ctx.connect(user, { status: true, node: 0 });
  const d1 = await ctx.connect(user, { status: true, node: 1 });
  assert.deepEqual(await d0.event(), ev([d1.me('')]));
  const d2 = await ctx.connect(user, { status: true, node: 2 });
  assert.deepEqual(await d0.event(), ev([d2.me('')]));
  assert.deepEqual(await d1.event(), ev([d2.me('')]));
  assert.equal(new Set([d0.sessionId, d1.sessionId, d2.sessionId]).size, 3);

  const { sock: f, snapshot } = await followerOn(ctx, 1, [user]);
  assert.deepEqual(snapshot, h.bySession([d0.me(''), d1.me(''), d2.me('')]));

  // A change on one node reaches the devices on the other two and the follower.
  await d2.update('pc');
  for (const sock of [d0, d1, f]) assert.deepEqual(await sock.event(), ev([d2.me('pc')], [d2.me('')]));
  await d0.update('phone');
  for (const sock of [d1, d2, f]) assert.deepEqual(await sock.event(), ev([d0.me('phone')], [d0.me('')]));
  assert.deepEqual(await statusOn(ctx, 2, [user.user_id]), [expectedStatus(user.user_id, [[d0, 'phone'], [d1, ''], [d2, 'pc']])]);

  // A device leaves: the others and the follower see its leave.
  await d1.disconnect();
  for (const sock of [d0, d2, f]) assert.deepEqual(await sock.event(), ev([], [d1.me('')]));
  // One goes invisible: the remaining device and the follower see it.
  await d0.update(undefined);
  for (const sock of [d2, f]) assert.deepEqual(await sock.event(), ev([], [d0.me('phone')]));
  for (const node of [0, 1, 2]) {
    const { snapshot: now } = await followerOn(ctx, node, [user]);
    assert.deepEqual(now, [d2.me('pc')], `snapshot on node ${node}`);
  }
  await d0.quiet(0);
  await d2.quiet(0);
  await f.quiet(0);
});

test('appearing offline and the erasure on disconnect are seen from the other nodes', async (ctx) => {
  const b = await ctx.connect(await ctx.user('b'), { node: 0 });
  await b.update('secret');
  const { sock: f1, snapshot } = await followerOn(ctx, 1, [b]);
  assert.deepEqual(snapshot, [b.me('secret')]);
  const { sock: f2 } = await followerOn(ctx, 2, [b]);

  await b.update(undefined);
  for (const f of [f1, f2]) assert.deepEqual(await f.event(), ev([], [b.me('secret')]));
  for (const node of [0, 1, 2]) {
    assert.deepEqual((await followerOn(ctx, node, [b])).snapshot, [], `invisible, from node ${node}`);
    assert.deepEqual(await statusOn(ctx, node, [b.userId]), [expectedStatus(b.userId, [])]);
  }

  await b.update('back');
  for (const f of [f1, f2]) assert.deepEqual(await f.event(), ev([b.me('back')]));
  await b.disconnect();
  for (const f of [f1, f2]) assert.deepEqual(await f.event(), ev([], [b.me('back')]));
  for (const node of [0, 1, 2]) {
    assert.deepEqual((await followerOn(ctx, node, [b])).snapshot, [], `erased, from node ${node}`);
    assert.deepEqual(await statusOn(ctx, node, [b.userId]), [expectedStatus(b.userId, [])]);
  }

  // An abrupt close (no websocket close frame) erases the status as well.
  const c = await ctx.connect(await ctx.user('c'), { node: 2 });
  await c.update('cut');
  const { sock: g } = await followerOn(ctx, 0, [c]);
  c.ws._socket.destroy();
  assert.deepEqual(await g.event(), ev([], [c.me('cut')]));
  assert.deepEqual((await followerOn(ctx, 1, [c])).snapshot, []);
  for (const f of [f1, f2, g]) await f.quiet(0);
});

test('follow by username of a user created on another node, at once, in both formats', async (ctx) => {
  for (const mode of ['json', 'pb']) {
    // Created on node 2 and followed by name from node 0 straight away.
    const x = await ctx.userOn(2, 'byname');
    const f = await ctx.connect(await ctx.user('f'), { node: 0, mode });
    const reply = await f.socket.send({ status_follow: { usernames: [x.username] } });
    assert.deepEqual(h.snapshotPresences(reply.status, mode), [], `${mode}: ${JSON.stringify(reply)}`);
    // The follow holds: x appears on node 1.
    const xs = await ctx.connect(x, { status: true, node: 1 });
    assert.deepEqual(await f.event(), ev([xs.me('')]));

    // Created, connected and online on node 1, followed by name from node 2
    // right after its authenticate; with ids, a duplicate and an unknown name.
    const y = await ctx.userOn(1, 'byname');
    const ys = await ctx.connect(y, { node: 1 });
    await ys.update('hi');
    const g = await ctx.connect(await ctx.user('g'), { node: 2, mode });
    const both = await g.socket.send({ status_follow: { user_ids: [x.user_id], usernames: [y.username, y.username, h.uid('nosuchname')] } });
    assert.deepEqual(h.snapshotPresences(both.status, mode), h.bySession([xs.me(''), ys.me('hi')]));
    await ys.update('bye');
    assert.deepEqual(await g.event(), ev([ys.me('bye')], [ys.me('hi')]));
    await f.quiet(0);
  }
});

test('follows of unknown ids are dropped on every node; known ids in the same request are followed', async (ctx) => {
  const ext = h.mintToken();
  const known = await ctx.connect(await ctx.user('k'), { status: true, node: 1 });
  const f = await ctx.connect(await ctx.user('f'), { node: 0 });
  assert.deepEqual(await f.follow([crypto.randomUUID(), ext.userId, known.userId]), [known.me('')]);
  // The unknown user now connects on another node (a token minted elsewhere
  // with the same key): the dropped follow does not come back.
  const x = await ctx.connect(h.nakama.Session.restore(ext.token, ''), { status: true, node: 2 });
  await x.update('visible?');
  await known.update('k1');
  assert.deepEqual(await f.event(), ev([known.me('k1')], [known.me('')]));
  await f.quiet();
  // Once its token was seen, the user is known to every node (recorded in
  // Postgres in the background, within milliseconds): a new follow finds it.
  const g = await ctx.connect(await ctx.user('g'), { node: 1 });
  await eventually(async () => assert.deepEqual(await g.follow([ext.userId]), [x.me('visible?')]), 'a follow of the user first seen in a token');
});

test('backend API: GET /v2/status on any node answers for sessions on every node', async (ctx) => {
  const u = await ctx.user('api');
  const s1 = await ctx.connect(u, { node: 1 });
  await s1.update('lobby');
  const s2 = await ctx.connect(u, { node: 2 }); // no status: not listed
  const s0 = await ctx.connect(u, { node: 0 });
  await s0.update('home');
  assert.deepEqual(await s1.event(), ev([s0.me('home')]));
  const offline = await ctx.user('off');
  const unknown = crypto.randomUUID();
  const expected = [
    expectedStatus(u.user_id, [[s1, 'lobby'], [s0, 'home']]),
    expectedStatus(offline.user_id, []),
    expectedStatus(unknown, []),
    expectedStatus(u.user_id, [[s1, 'lobby'], [s0, 'home']]),
  ];
  for (const node of [0, 1, 2]) {
    assert.deepEqual(await statusOn(ctx, node, [u.user_id, offline.user_id, unknown, u.user_id]), expected, `on node ${node}`);
  }
  await s1.update(undefined);
  // The answer is the log's, which the other nodes read within milliseconds.
  for (const node of [0, 2]) {
    await eventually(async () => {
      assert.deepEqual(await statusOn(ctx, node, [u.user_id]), [expectedStatus(u.user_id, [[s0, 'home']])], `on node ${node}`);
    }, `node ${node} to see the status cleared`);
  }
  assert.ok(s2.isOpen());
});

test('backend API: POST /v2/session/{id}/disconnect on one node closes a session on another', async (ctx) => {
  const u = await ctx.user('kick');
  const withStatus = await ctx.connect(u, { node: 1 });
  await withStatus.update('banned soon');
  // A session without a status is not in the log: found by asking every node.
  const silent = await ctx.connect(await ctx.user('quiet'), { node: 2 });
  const { sock: f } = await followerOn(ctx, 2, [u]);

  const res = await ctx.admin(0, 'POST', `/v2/session/${withStatus.sessionId}/disconnect`, { body: '{"reason":"banned"}' });
  assert.equal(res.status, 204, res.body);
  assert.deepEqual(await withStatus.closedByServer(), { code: 1000, reason: 'banned' });
  assert.deepEqual(await f.event(), ev([], [withStatus.me('banned soon')]));
  await h.waitUntil(() => withStatus.disconnects.length === 1, 'nakama-js ondisconnect');

  // Its session id is learnt from the status API of a third node.
  // (A game backend learns session ids from GET /v2/status, here on a third node.)
  await silent.update('x');
  assert.deepEqual(await statusOn(ctx, 1, [silent.userId]), [expectedStatus(silent.userId, [[silent, 'x']])]);
  await silent.update(undefined);
  const kick = await ctx.admin(1, 'POST', `/v2/session/${silent.sessionId}/disconnect`);
  assert.equal(kick.status, 204, kick.body);
  assert.deepEqual(await silent.closedByServer(), { code: 1000, reason: 'server-side session disconnect' });

  // Gone: 404 from every node; an id nobody has: 404.
  for (const node of [0, 1, 2]) {
    const again = await ctx.admin(node, 'POST', `/v2/session/${withStatus.sessionId}/disconnect`);
    assert.equal(again.status, 404, `node ${node}: ${again.body}`);
  }
  assert.equal((await ctx.admin(2, 'POST', `/v2/session/${crypto.randomUUID()}/disconnect`)).status, 404);
  await f.quiet(0);
});

test('--max-follows on a node: code 3 "Too many follows" for users on other nodes, the session stays open', () =>
  withCluster(['--max-follows', '3'], async (ctx) => {
    const targets = [];
    // Spread round-robin over the nodes; the follower is on node 0.
    for (let i = 0; i < 5; i += 1) targets.push(await ctx.connect(await ctx.user(`t${i}`), { status: true }));
    const f = await ctx.connect(await ctx.user('f'), { node: 0 });
    assert.equal((await f.follow(targets.slice(0, 2).map((t) => t.userId))).length, 2);
    const error = await h.rejection(f.socket.followUsers([targets[2].userId, targets[3].userId]), 'over the cap');
    checkError(error, 3, 'Too many follows', 'json');
    assert.ok(f.isOpen());
    await targets[3].update('unseen');
    await f.quiet();
    assert.equal((await f.follow(targets.slice(0, 3).map((t) => t.userId))).length, 3);
    checkError(await h.rejection(f.socket.followUsers([targets[4].userId]), 'fourth'), 3, 'Too many follows', 'json');
    assert.equal((await f.follow([f.userId, targets[0].userId])).length, 1, 'self does not count');
    await f.unfollow([targets[0].userId]);
    assert.deepEqual(await f.follow([targets[4].userId]), [targets[4].me('')]);
    await targets[4].update('seen');
    assert.deepEqual(await f.event(), ev([targets[4].me('seen')], [targets[4].me('')]));
    // The cap is per session: another session of the same user on another node has its own.
    const f2 = await ctx.connect(f.session, { node: 1 });
    assert.equal((await f2.follow(targets.slice(0, 3).map((t) => t.userId))).length, 3);
  }));

test('--single-socket: a new socket on another node replaces the old one (notification, then close 1000)', () =>
  withCluster(['--single-socket'], async (ctx) => {
    const u = await ctx.user('single');
    const { sock: f } = await followerOn(ctx, 2, [u]);
    const a = await ctx.connect(u, { status: true, node: 0 });
    assert.deepEqual(await f.event(), ev([a.me('')]));

    /** `old` was replaced: Nakama's notice, then 1000, and its followers see it leave. */
    const replaced = async (old, mode) => {
      await h.waitUntil(() => old.notifications.length > 0, `the single-socket notification on ${old.server.name}`);
      assert.equal(old.notifications.length, 1);
      const [notice] = old.notifications;
      assert.equal(notice.subject, 'single_socket', JSON.stringify(notice));
      assert.equal(notice.code, -7, JSON.stringify(notice));
      assert.deepEqual(notice.content, {}, JSON.stringify(notice));
      assert.match(notice.id, /^[0-9a-f-]{36}$/);
      assert.ok(notice.create_time, JSON.stringify(notice));
      assert.deepEqual(await old.closedByServer(), { code: 1000, reason: 'server-side session disconnect' }, mode);
      await h.waitUntil(() => old.disconnects.length === 1, 'nakama-js ondisconnect');
    };

    // The new socket (node 1, no status yet) replaces a (node 0).
    const b = await ctx.connect(u, { node: 1 });
    await replaced(a, 'json');
    assert.deepEqual(await f.event(), ev([], [a.me('')]));
    await h.sleep(100);
    b.read = b.events.length; // b may have seen a leave; not what this test is about
    await b.update('new');
    assert.deepEqual(await f.event(), ev([b.me('new')]));
    assert.ok(b.isOpen());

    // A protobuf socket on node 2 replaces b; then a JSON one on node 0 replaces it.
    const c = await ctx.connect(u, { node: 2, mode: 'pb' });
    await replaced(b, 'json');
    assert.deepEqual(await f.event(), ev([], [b.me('new')]));
    const d = await ctx.connect(u, { node: 0 });
    await replaced(c, 'pb');
    await h.sleep(100);
    d.read = d.events.length;
    await d.update('last');
    assert.deepEqual(await f.event(), ev([d.me('last')]));
    assert.ok(d.isOpen());
    await f.quiet(0);
    // One session left, on node 0, whichever node is asked.
    for (const node of [0, 1, 2]) {
      const res = await ctx.admin(node, 'GET', `/v2/status?user_ids=${u.user_id}`);
      assert.deepEqual(JSON.parse(res.body).users[0].sessions, [{ session_id: d.sessionId, status: 'last' }]);
    }
  }));
