// Herald's live status demo: plain fetch and WebSocket, speaking Nakama's
// realtime protocol (JSON envelopes) to the server that served this page.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  const REQUEST_TIMEOUT_MS = 10000;
  const ACTIVITY_LINES = 8;

  let socket = null;
  let me = null; // { userId, username }
  let nextCid = 1;
  const pending = new Map(); // cid -> { resolve, reject, timer }
  // Friends in the order added: { key, label, userId, username, sessions: Map(session_id -> status), last }
  const friends = [];

  // ---- small helpers --------------------------------------------------------

  function notice(text) {
    const el = $('notice');
    el.textContent = text || '';
    el.hidden = !text;
  }

  function activity(text) {
    const list = $('activity');
    const item = document.createElement('li');
    const time = document.createElement('time');
    time.textContent = new Date().toLocaleTimeString();
    item.append(time, ' ', text);
    list.prepend(item);
    while (list.children.length > ACTIVITY_LINES) list.lastElementChild.remove();
  }

  function decodeToken(token) {
    const part = token.split('.')[1] || '';
    const base64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const padded = base64 + '='.repeat((4 - (base64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  }

  function showLoggedIn(loggedIn) {
    $('login-form').hidden = loggedIn;
    $('login-title').textContent = loggedIn ? '1. You' : '1. Log in';
    $('session').hidden = !loggedIn;
    for (const id of ['status-section', 'friends-section', 'activity-section']) $(id).hidden = !loggedIn;
  }

  function setConnection(text) {
    $('connection').textContent = text;
  }

  // ---- REST: authenticate ---------------------------------------------------

  async function authenticate(customId, username, serverKey) {
    const query = new URLSearchParams({ create: 'true' });
    if (username) query.set('username', username);
    const response = await fetch('/v2/account/authenticate/custom?' + query, {
      method: 'POST',
      headers: {
        Authorization: 'Basic ' + btoa(unescape(encodeURIComponent(serverKey + ':'))),
        'Content-Type': 'application/json',
      },
      body: JSON.stringify({ id: customId }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new Error(body.message || `login failed (HTTP ${response.status})`);
    }
    return body.token;
  }

  // ---- the realtime socket --------------------------------------------------

  function connect(token) {
    return new Promise((resolve, reject) => {
      const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
      const query = new URLSearchParams({ lang: 'en', status: 'true', token });
      const ws = new WebSocket(`${scheme}://${location.host}/ws?${query}`);
      let opened = false;
      ws.onopen = () => {
        opened = true;
        resolve(ws);
      };
      ws.onmessage = (event) => receive(event.data);
      ws.onclose = (event) => {
        if (!opened) {
          reject(new Error('the server refused the realtime connection'));
          return;
        }
        if (socket !== ws) return;
        socket = null;
        const reason = event.reason ? `: ${event.reason}` : '';
        setConnection(`closed (${event.code}${reason})`);
        notice(`Disconnected from Herald (${event.code}${reason}). Log out and in again to reconnect.`);
        for (const { reject: fail, timer } of pending.values()) {
          clearTimeout(timer);
          fail(new Error('disconnected'));
        }
        pending.clear();
        for (const friend of friends) friend.sessions.clear();
        renderFriends();
      };
    });
  }

  /** Sends one request envelope; resolves with the reply envelope. */
  function request(message) {
    if (!socket) return Promise.reject(new Error('not connected'));
    const cid = String(nextCid++);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        pending.delete(cid);
        reject(new Error('no answer from the server'));
      }, REQUEST_TIMEOUT_MS);
      pending.set(cid, { resolve, reject, timer });
      socket.send(JSON.stringify(Object.assign({ cid }, message)));
    });
  }

  function receive(data) {
    let envelope;
    try {
      envelope = JSON.parse(data);
    } catch (_) {
      return;
    }
    if (envelope.cid !== undefined) {
      const waiting = pending.get(envelope.cid);
      if (!waiting) return;
      pending.delete(envelope.cid);
      clearTimeout(waiting.timer);
      if (envelope.error) waiting.reject(new Error(envelope.error.message || 'request failed'));
      else waiting.resolve(envelope);
      return;
    }
    if (envelope.status_presence_event) presenceEvent(envelope.status_presence_event);
  }

  // ---- friends ----------------------------------------------------------------

  function friendFor(presence) {
    return friends.find((f) => f.userId === presence.user_id)
      || friends.find((f) => !f.userId && f.username === presence.username);
  }

  /** Applies presences: leaves first, then joins (an update carries both for one session). */
  function applyPresences(joins, leaves, announce) {
    for (const p of leaves) {
      if (me && p.user_id === me.userId) continue;
      const friend = friendFor(p);
      if (!friend) continue;
      friend.userId = p.user_id;
      friend.username = p.username;
      friend.sessions.delete(p.session_id);
      if (announce && !joins.some((j) => j.session_id === p.session_id) && friend.sessions.size === 0) {
        activity(`${p.username} went offline`);
      }
    }
    for (const p of joins) {
      if (me && p.user_id === me.userId) continue;
      const friend = friendFor(p);
      if (!friend) continue;
      friend.userId = p.user_id;
      friend.username = p.username;
      friend.sessions.set(p.session_id, p.status || '');
      friend.last = p.session_id;
      if (announce) {
        activity(p.status ? `${p.username} is online: “${p.status}”` : `${p.username} is online`);
      }
    }
    renderFriends();
  }

  function presenceEvent(event) {
    applyPresences(event.joins || [], event.leaves || [], true);
  }

  async function addFriend(text) {
    const value = text.trim();
    if (!value) return;
    const byId = UUID.test(value);
    const key = byId ? value.toLowerCase() : value;
    if (me && (key === me.userId || key === me.username)) {
      notice('That is you. Add another player.');
      return;
    }
    if (friends.some((f) => f.key === key || f.userId === key || f.username === key)) {
      notice(`${value} is already on your list.`);
      return;
    }
    const friend = {
      key,
      label: value,
      userId: byId ? key : null,
      username: byId ? null : value,
      sessions: new Map(),
      last: null,
    };
    const follow = byId ? { user_ids: [key] } : { usernames: [value] };
    const reply = await request({ status_follow: follow });
    friends.push(friend);
    const presences = (reply.status && reply.status.presences) || [];
    applyPresences(presences, [], false);
    activity(`following ${value}`);
  }

  function renderFriends() {
    const list = $('friends');
    list.replaceChildren();
    $('no-friends').hidden = friends.length > 0;
    for (const friend of friends) {
      const online = friend.sessions.size > 0;
      const item = document.createElement('li');
      item.className = online ? 'friend online' : 'friend offline';
      item.dataset.state = online ? 'online' : 'offline';
      if (friend.userId) item.dataset.userId = friend.userId;
      item.dataset.key = friend.key;

      const dot = document.createElement('span');
      dot.className = 'dot';
      dot.setAttribute('aria-hidden', 'true');

      const name = document.createElement('span');
      name.className = 'name';
      name.textContent = friend.username || friend.label;

      const state = document.createElement('span');
      state.className = 'state';
      state.textContent = online ? 'Online' : 'Offline';

      const status = document.createElement('span');
      status.className = 'status';
      if (online) {
        const text = friend.sessions.get(friend.last) ?? [...friend.sessions.values()].pop();
        status.textContent = text ? `“${text}”` : 'no status text';
        if (!text) status.classList.add('muted');
      }

      const line = document.createElement('div');
      line.className = 'line';
      line.append(dot, name, state);
      item.append(line, status);
      if (friend.userId) {
        const id = document.createElement('code');
        id.className = 'id';
        id.textContent = friend.userId;
        item.append(id);
      }
      list.append(item);
    }
  }

  // ---- own status ---------------------------------------------------------------

  function showMyStatus(status) {
    const online = status !== null;
    $('my-state').textContent = online ? 'online' : 'offline';
    $('my-state').className = online ? 'ok' : '';
    $('my-status').textContent = online ? (status ? `, with status “${status}”.` : ', with no status text.') : '.';
  }

  async function setStatus(status) {
    await request({ status_update: status === null ? {} : { status } });
    showMyStatus(status);
    activity(status === null ? 'you cleared your status' : `you set your status: “${status}”`);
  }

  // ---- wiring ---------------------------------------------------------------------

  function guard(button, work) {
    return async (event) => {
      event.preventDefault();
      notice('');
      button.disabled = true;
      try {
        await work();
      } catch (error) {
        notice(error.message);
      } finally {
        button.disabled = false;
      }
    };
  }

  function logout() {
    const ws = socket;
    socket = null;
    if (ws) ws.close(1000);
    me = null;
    friends.length = 0;
    renderFriends();
    $('activity').replaceChildren();
    showLoggedIn(false);
    notice('');
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('login-form').addEventListener('submit', guard($('login'), async () => {
      const customId = $('custom-id').value.trim();
      const username = $('username').value.trim();
      const token = await authenticate(customId, username, $('server-key').value);
      const claims = decodeToken(token);
      const ws = await connect(token);
      socket = ws;
      me = { userId: claims.uid, username: claims.usn };
      $('me-name').textContent = me.username;
      $('me-id').textContent = me.userId;
      setConnection('connected');
      showMyStatus('');
      showLoggedIn(true);
      renderFriends();
      activity('connected: you appear online');
      $('status-text').focus();
    }));
    $('logout').addEventListener('click', logout);
    $('status-form').addEventListener('submit', guard($('set-status'), () => setStatus($('status-text').value)));
    $('clear-status').addEventListener('click', guard($('clear-status'), async () => {
      await setStatus(null);
      $('status-text').value = '';
    }));
    $('friend-form').addEventListener('submit', guard($('add-friend'), async () => {
      await addFriend($('friend').value);
      $('friend').value = '';
    }));
  });
})();
