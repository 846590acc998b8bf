'use strict';
// JSON and protobuf sessions side by side: one user followed by a JSON
// session and a protobuf session at once (and with sessions of its own in
// both formats). Every session must see the same events, in the same order,
// each in its own format.

const assert = require('node:assert/strict');

const h = require('./harness');
const { ev } = require('./scenarios');

const { test } = h.useHerald(['--shards', '3'], { mode: 'json' });

test('a JSON follower and a protobuf follower see the same events in the same order', async (ctx) => {
  const b = await ctx.user('b');
  const bj = await ctx.connect(b, { status: true, mode: 'json' });
  const bp = await ctx.connect(b, { status: false, mode: 'pb' });
  // bj's join happened before bp connected; bp has no status yet.
  const fj = await ctx.connect(await ctx.user('fj'), { mode: 'json' });
  const fp = await ctx.connect(await ctx.user('fp'), { mode: 'pb' });
  assert.deepEqual(await fj.follow([b.user_id]), [bj.me('')]);
  assert.deepEqual(await fp.follow([b.user_id]), [bj.me('')]);

  // bp's first status: learn its session id from its own echo.
  await bp.update('pb0');
  const expected = [ev([bp.me('pb0')])];
  let lastJ = '';
  let lastP = 'pb0';
  // Interleaved bursts from both of b's sessions, without waiting for acks.
  const sends = [];
  for (let i = 1; i <= 40; i += 1) {
    const sj = `j${i}`;
    sends.push(bj.socket.updateStatus(sj));
    expected.push(ev([bj.me(sj)], [bj.me(lastJ)]));
    lastJ = sj;
    if (i % 4 === 0) {
      const sp = `p${i}é😀`;
      sends.push(bp.socket.updateStatus(sp));
      expected.push(ev([bp.me(sp)], [bp.me(lastP)]));
      lastP = sp;
    }
  }
  await h.within(Promise.all(sends), 8000, 'acks');
  sends.length = 0;
  sends.push(bj.socket.updateStatus(''));
  expected.push(ev([bj.me('')], [bj.me(lastJ)]));
  sends.push(bp.socket.updateStatus());
  expected.push(ev([], [bp.me(lastP)]));
  await Promise.all(sends);

  // Events of one session keep their order everywhere; here both sessions
  // live on one user, so every follower sees one and the same sequence.
  const perSession = (list, sid) => list.filter((e) => [...e.joins, ...e.leaves][0].session_id === sid);
  const got = {};
  for (const [name, sock] of [['fj', fj], ['fp', fp], ['bj', bj], ['bp', bp]]) {
    // bp already consumed its first echo (in update); the others have it unread.
    const wanted = expected.length - (name === 'bp' ? 1 : 0);
    got[name] = (await sock.next(wanted, 8000)).map(h.norm);
    for (const sid of [bj.sessionId, bp.sessionId]) {
      assert.deepEqual(perSession(got[name], sid), perSession(expected.slice(expected.length - wanted), sid), `${name}: order of ${sid}`);
    }
  }
  assert.deepEqual(got.fp, got.fj, 'the JSON and the protobuf follower saw the same sequence');
  assert.deepEqual(got.bj.slice(1), got.bp, 'both of b\'s sessions saw the same sequence');
  assert.deepEqual(got.bj, got.fj);

  // Snapshots agree too.
  assert.deepEqual(await fj.follow([b.user_id]), [bj.me('')]);
  assert.deepEqual(await fp.follow([b.user_id]), [bj.me('')]);

  // Disconnects: a leave in each format.
  await bp.update('last');
  await bj.event();
  await fj.event();
  await fp.event();
  await bp.disconnect();
  for (const sock of [fj, fp, bj]) assert.deepEqual(await sock.event(), ev([], [bp.me('last')]));
  await bj.disconnect();
  for (const sock of [fj, fp]) assert.deepEqual(await sock.event(), ev([], [bj.me('')]));
  await fj.quiet();
  await fp.quiet(0);
});

test('one user, a JSON and a protobuf session: each sees the other in its own format', async (ctx) => {
  const a = await ctx.user('a');
  const aj = await ctx.connect(a, { status: true, mode: 'json' });
  const ap = await ctx.connect(a, { status: true, mode: 'pb' });
  // aj sees ap's join (in JSON); ap only its own.
  assert.deepEqual(await aj.event(), ev([ap.me('')]));
  await ap.quiet(100);
  await ap.update('from pb');
  assert.deepEqual(await aj.event(), ev([ap.me('from pb')], [ap.me('')]));
  await aj.update('from json');
  assert.deepEqual(await ap.event(), ev([aj.me('from json')], [aj.me('')]));
  const f = await ctx.connect(await ctx.user('f'), { mode: 'pb' });
  assert.deepEqual(await f.follow([a.user_id]), h.bySession([aj.me('from json'), ap.me('from pb')]));
});

/** Applies a status event to a follower's view: session id → status. */
function apply(view, event) {
  for (const p of event.leaves) view.delete(p.session_id);
  for (const p of event.joins) view.set(p.session_id, p.status);
}

test('churn: followers that apply snapshot + events converge on the true state', async (ctx) => {
  const users = await ctx.users(6, 'churn');
  // Followers in both formats, following everyone from the start.
  const followers = [];
  for (const mode of ['json', 'pb', 'json']) {
    const sock = await ctx.connect(await ctx.user('w'), { mode });
    const view = new Map();
    for (const p of await sock.follow(users.map((u) => u.user_id))) view.set(p.session_id, p.status);
    followers.push({ sock, view });
  }
  const rand = (n) => Math.floor(Math.random() * n);
  let late = null;
  const inFlight = [];
  // Each user runs its own random sequence of connects, updates and disconnects.
  await Promise.all(users.map(async (user, u) => {
    const socks = [];
    for (let step = 0; step < 40; step += 1) {
      const choice = rand(10);
      if (socks.length === 0 || (choice === 0 && socks.length < 3)) {
        socks.push(await ctx.connect(user, { status: rand(2) === 0, mode: rand(2) ? 'json' : 'pb' }));
      } else if (choice === 1) {
        const [gone] = socks.splice(rand(socks.length), 1);
        await gone.disconnect();
      } else if (choice === 2) {
        await socks[rand(socks.length)].socket.updateStatus();
      } else {
        const sock = socks[rand(socks.length)];
        inFlight.push(sock.socket.updateStatus(`u${u}s${step}${'x'.repeat(rand(300))}`));
      }
      if (u === 0 && step === 20) {
        // A follower that joins in the middle of it all.
        const sock = await ctx.connect(await ctx.user('late'), { mode: 'pb' });
        const view = new Map();
        for (const p of await sock.follow(users.map((x) => x.user_id))) view.set(p.session_id, p.status);
        late = { sock, view };
      }
    }
  }));
  followers.push(late);
  // Quiescence: every outstanding request answered, then a truth snapshot.
  const settled = await h.within(Promise.allSettled(inFlight), 8000, 'outstanding updates');
  assert.deepEqual(settled.filter((r) => r.status === 'rejected'), []);
  await h.sleep(100);
  const truthSock = await ctx.connect(await ctx.user('truth'));
  const truth = new Map((await truthSock.follow(users.map((u) => u.user_id))).map((p) => [p.session_id, p.status]));
  for (const { sock, view } of followers) {
    await h.sleep(50);
    for (const event of await sock.next(sock.events.length - sock.read)) apply(view, h.norm(event));
    assert.deepEqual(new Map([...view].sort()), new Map([...truth].sort()), `${sock.mode} follower's view`);
  }
});
