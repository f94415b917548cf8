// chromecard's page: plain script, no framework, no markup built from data (textContent
// only). Talks to k_proxy with the session cookie (HttpOnly: this script never sees the
// token) and the X-Chromecard-CSRF header; live updates arrive over WebSockets opened
// with single-use tickets.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);

  let config = { touch_timeout: 30, session_ttl: 300, idle_timeout: null };
  const state = {
    user: null,
    // The public id of the session this page shows.
    sessionId: null,
    expiresAt: 0,
    idleAt: 0,
    sockets: new Map(),
    // Per stream: how long the last reconnect waited (doubling while drops come soon).
    retryWait: new Map(),
    tick: null,
    active: false,
    leaving: false,
    // Which session this is (a new login starts another): timers and answers meant for
    // an earlier one must not end it.
    generation: 0,
    // This page's own requests to end its session still on their way (see askToEnd),
    // and why a socket said meanwhile that the session is over.
    endsAsked: 0,
    socketEnd: null,
  };

  // How long a 4401 from a socket waits for the answer to the page's own request before
  // the page believes the socket (fetch itself has no deadline).
  const ANSWER_GRACE_MS = 5000;

  const LOGIN_ERRORS = {
    not_enrolled: 'No key is enrolled for this username on this k_proxy. Ask its operator to enrol your key.',
    credential_not_found: 'That key is not the one enrolled for this username (wrong key).',
    key_refused: 'The key refused to sign in (wrong key, or the request was declined on the key).',
    touch_timeout: 'Nobody touched the key in time. Try again, and touch the key while it blinks.',
    no_key: 'No key is attached to k_proxy. Plug it in (or attach it to the k_proxy qube) and try again.',
    multiple_keys: 'Several keys are attached to k_proxy; detach all but one and try again.',
    device_not_found: 'The key k_proxy was told to use is not attached.',
    device_error: 'The key did not answer properly. Unplug it, plug it in again and retry.',
    device_busy: 'Someone else is using the key right now. Try again in a few seconds.',
    login_queue_full: 'Too many logins are waiting for the key. Try again shortly.',
    missing_username: 'Enter a username.',
    invalid_username: 'A username is 1 to 64 letters, digits, dots, dashes or underscores, starting with a letter or digit.',
    shutting_down: 'k_proxy is restarting; try again in a moment.',
    session_limit: 'k_proxy holds too many sessions right now; try again later.',
    session_store_unavailable: 'k_proxy could not record the session; try again later.',
    credential_store_error: 'k_proxy cannot read its list of enrolled keys; tell its operator.',
    host_not_allowed: 'k_proxy does not answer to this address. Open it as 127.0.0.1 or localhost.',
  };

  const ENDED = {
    logged_out: 'You were logged out, here or in another window ("Log out everywhere" ends every session).',
    expired: 'Your session reached its time limit.',
    idle_timeout: 'Your session was unused for too long.',
    session_mismatch: 'This browser\'s session cookie now names another session than the one this page showed (a login in another tab, or a cookie set by another site on this host).',
    superseded: 'A newer login replaced this session.',
    invalid_token: 'k_proxy no longer knows this session (it may have restarted).',
  };

  function sentence(code, fallback) {
    return ENDED[code] || LOGIN_ERRORS[code] || fallback || 'Something went wrong (' + code + ').';
  }

  async function api(method, path, body) {
    const headers = { 'X-Chromecard-CSRF': '1', Accept: 'application/json' };
    // The session this page shows: k_proxy refuses the request (session_mismatch) if the
    // cookie now names another one.
    if (state.active && state.sessionId) headers['X-Chromecard-Session'] = state.sessionId;
    const init = { method: method, headers: headers, credentials: 'same-origin', cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      return { ok: false, status: 0, data: { error: 'network', message: 'k_proxy could not be reached.' } };
    }
    let data = {};
    try {
      data = await response.json();
    } catch (err) {
      data = {};
    }
    // A ticket for live updates is the page's own doing, not a use of the session.
    if (response.ok && path !== '/session/ws-ticket') {
      used();
    }
    return { ok: response.ok, status: response.status, data: data, retryAfter: response.headers.get('Retry-After') };
  }

  function show(view) {
    for (const id of ['login-view', 'session-view', 'ended-view']) {
      $(id).hidden = id !== view;
    }
  }

  function notice(text) {
    const el = $('notice');
    el.textContent = text || '';
    el.hidden = !text;
  }

  function fmt(seconds) {
    if (seconds <= 0) return '0 s';
    const m = Math.floor(seconds / 60);
    const s = seconds % 60;
    return m > 0 ? m + ' min ' + String(s).padStart(2, '0') + ' s' : s + ' s';
  }

  // Each answered request restarts the session's idle clock at k_proxy.
  function used() {
    if (config.idle_timeout) state.idleAt = Date.now() + config.idle_timeout * 1000;
  }

  // ---- login -----------------------------------------------------------------------

  let touchTimer = null;

  function touchPrompt(on) {
    const box = $('touch');
    clearInterval(touchTimer);
    box.hidden = !on;
    $('login-button').disabled = on;
    if (!on) return;
    const total = config.touch_timeout;
    const until = Date.now() + total * 1000;
    $('touch-bar').max = total;
    const draw = () => {
      const left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
      $('touch-left').textContent = String(left);
      $('touch-bar').value = left;
    };
    draw();
    touchTimer = setInterval(draw, 250);
  }

  async function login(event) {
    event.preventDefault();
    const username = $('username').value.trim();
    $('login-error').hidden = true;
    notice('');
    touchPrompt(true);
    const r = await api('POST', '/session/login', { username: username, cookie: true });
    touchPrompt(false);
    if (r.ok) {
      remember(r.data.session_id);
      enter(r.data);
      return;
    }
    let text = sentence(r.data.error, r.data.message);
    if (r.data.error === 'login_throttled') {
      const wait = r.retryAfter || '?';
      text = 'Too many refused logins for this name or address: wait ' + wait + ' seconds before trying again.';
    }
    $('login-error').textContent = text;
    $('login-error').hidden = false;
    $('username').focus();
  }

  // ---- the session -------------------------------------------------------------------

  // Which session this browser's pages started here, by its public id, in this origin's
  // storage. A browser sends the cookie to every port of the host, and a page on another
  // port can set it (to its own session, to sign the user in as someone else); it cannot
  // write this origin's storage. So a page adopts a session on load only if one of its
  // pages started it.
  const OWN = 'chromecard.session_id';

  function ownSession() {
    try {
      return localStorage.getItem(OWN);
    } catch (err) {
      return null;
    }
  }

  function remember(id) {
    try {
      if (id) localStorage.setItem(OWN, id);
      else if (ownSession() === state.sessionId) localStorage.removeItem(OWN);
    } catch (err) {
      // No storage: every load asks for a login.
    }
  }

  function enter(data) {
    state.active = true;
    state.generation += 1;
    state.endsAsked = 0;
    state.socketEnd = null;
    state.leaving = false;
    state.user = data.username;
    state.sessionId = data.session_id;
    state.expiresAt = Date.now() + data.expires_in * 1000;
    used();
    $('s-user').textContent = data.username;
    $('s-scope').textContent = data.scope ? data.scope.join(', ') : 'all resources';
    show('session-view');
    clearInterval(state.tick);
    state.tick = setInterval(tick, 250);
    tick();
    loadCounter();
    loadSecrets();
    loadSessions();
    openSocket('counter', onCounterEvent);
    openSocket('secrets', onSecretEvent);
    $('increment').focus();
  }

  function tick() {
    if (!state.active) return;
    const left = Math.ceil((state.expiresAt - Date.now()) / 1000);
    $('s-left').textContent = fmt(left);
    if (config.idle_timeout) {
      const idle = Math.ceil((state.idleAt - Date.now()) / 1000);
      $('s-idle').textContent = fmt(idle);
      if (idle <= 0) {
        ended('idle_timeout');
        return;
      }
    } else {
      $('s-idle').textContent = 'no idle limit';
    }
    if (left <= 0) ended('expired');
  }

  function ended(code, own, bySocket) {
    if (!state.active) return;
    state.active = false;
    remember(null);
    state.leaving = true;
    clearInterval(state.tick);
    closeSockets();
    notice('');
    hideSecret();
    const closed = bySocket ? ' k_proxy closed this page\'s live connection.' : '';
    $('ended-why').textContent = own ? own : sentence(code) + closed + ' Log in again to continue.';
    show('ended-view');
    $('again').focus();
  }

  // A 401 from any call means the session is over; its code says why.
  function check(r) {
    if (r.status === 401 && state.active) {
      ended(r.data.error);
      return false;
    }
    if (!r.ok) notice(sentence(r.data.error, r.data.message));
    return r.ok;
  }

  async function loadCounter() {
    const r = await api('GET', '/resource/counter');
    if (check(r)) $('counter').textContent = String(r.data.counter);
  }

  async function increment() {
    const r = await api('POST', '/resource/counter');
    if (check(r)) $('counter').textContent = String(r.data.counter);
  }

  function onCounterEvent(message) {
    if (message.type === 'counter') $('counter').textContent = String(message.counter);
  }

  // ---- secrets ---------------------------------------------------------------------

  const secretNames = new Set();

  function drawSecrets() {
    const list = $('secret-list');
    list.replaceChildren();
    for (const name of Array.from(secretNames).sort()) {
      const li = document.createElement('li');
      const label = document.createElement('span');
      label.textContent = name;
      const read = document.createElement('button');
      read.type = 'button';
      read.className = 'secondary';
      read.textContent = 'Read';
      read.setAttribute('aria-label', 'Read secret ' + name);
      read.addEventListener('click', () => readSecret(name));
      const del = document.createElement('button');
      del.type = 'button';
      del.className = 'danger';
      del.textContent = 'Delete';
      del.setAttribute('aria-label', 'Delete secret ' + name);
      del.addEventListener('click', () => deleteSecret(name));
      li.append(label, read, del);
      list.append(li);
    }
    $('secret-empty').hidden = secretNames.size > 0;
  }

  async function loadSecrets() {
    const r = await api('GET', '/resource/secrets');
    if (!check(r)) return;
    secretNames.clear();
    for (const name of r.data.names || []) secretNames.add(name);
    drawSecrets();
  }

  async function saveSecret(event) {
    event.preventDefault();
    const name = $('secret-name').value.trim();
    const value = $('secret-value').value;
    const r = await api('PUT', '/resource/secrets/' + encodeURIComponent(name), { value: value });
    if (!check(r)) return;
    secretNames.add(name);
    drawSecrets();
    $('secret-name').value = '';
    $('secret-value').value = '';
    notice('Saved the secret "' + name + '".');
    $('secret-name').focus();
  }

  async function readSecret(name) {
    const r = await api('GET', '/resource/secrets/' + encodeURIComponent(name));
    if (!check(r)) return;
    $('secret-shown-name').textContent = name;
    $('secret-shown-value').textContent = r.data.value;
    $('secret-shown').hidden = false;
    $('secret-hide').focus();
  }

  async function deleteSecret(name) {
    const r = await api('DELETE', '/resource/secrets/' + encodeURIComponent(name));
    if (!check(r)) return;
    secretNames.delete(name);
    drawSecrets();
    if ($('secret-shown-name').textContent === name) hideSecret();
    notice('Deleted the secret "' + name + '".');
  }

  function hideSecret() {
    $('secret-shown').hidden = true;
    $('secret-shown-value').textContent = '';
  }

  function onSecretEvent(message) {
    if (message.type === 'secret_added') secretNames.add(message.name);
    else if (message.type === 'secret_removed') secretNames.delete(message.name);
    else return;
    drawSecrets();
  }

  // ---- sessions ----------------------------------------------------------------------

  async function loadSessions() {
    const r = await api('GET', '/session/list');
    if (!check(r)) return;
    const list = $('session-list');
    list.replaceChildren();
    for (const s of r.data.sessions || []) {
      const li = document.createElement('li');
      const label = document.createElement('span');
      const since = new Date(s.created * 1000).toLocaleTimeString();
      label.textContent = s.session_id + ' - since ' + since + (s.client_address ? ' from ' + s.client_address : '') + (s.current ? ' (this one)' : '');
      const end = document.createElement('button');
      end.type = 'button';
      end.className = 'secondary';
      end.textContent = 'End';
      end.setAttribute('aria-label', 'End session ' + s.session_id);
      end.addEventListener('click', () => endSession(s.session_id));
      li.append(label, end);
      list.append(li);
    }
  }

  // k_proxy may close this page's sockets (4401) before the answer to its own request
  // to end the session arrives. The answer says more than the socket can, so it decides
  // what the page shows; the socket's reason is kept for when the answer never comes.
  async function askToEnd(path, body) {
    const generation = state.generation;
    state.endsAsked += 1;
    try {
      return await api('POST', path, body);
    } finally {
      if (state.generation === generation) state.endsAsked -= 1;
    }
  }

  // A socket closed with 4401 while the page's own request is on its way.
  function heldSocketEnd(why) {
    state.socketEnd = why;
    const generation = state.generation;
    setTimeout(() => {
      if (state.generation === generation) endedMeanwhile();
    }, ANSWER_GRACE_MS);
  }

  // The request failed (or its answer is late), but a socket already said the session is
  // over: believe it.
  function endedMeanwhile() {
    if (!state.socketEnd) return false;
    ended(state.socketEnd, null, true);
    return true;
  }

  async function endSession(id) {
    const r = await askToEnd('/session/end', { session_id: id });
    if (r.ok && r.data.current) {
      ended('logged_out', 'You ended this session. Log in again to continue.');
    } else if (!endedMeanwhile() && check(r)) {
      notice('Ended session ' + id + '.');
      loadSessions();
    }
  }

  async function logout(all) {
    state.leaving = true;
    const r = await askToEnd('/session/logout', all ? { all: true } : undefined);
    if (r.ok) {
      const n = r.data.sessions_ended;
      const count = n === 1 ? '1 session ended' : n + ' sessions ended';
      ended('logged_out', all ? 'You logged out everywhere (' + count + ').' : 'You logged out.');
    } else {
      state.leaving = false;
      if (!endedMeanwhile()) check(r);
    }
  }

  // ---- live updates ------------------------------------------------------------------

  function liveStatus() {
    const open = Array.from(state.sockets.values()).filter((ws) => ws.readyState === WebSocket.OPEN).length;
    const el = $('s-live');
    el.textContent = open === 2 ? 'on' : open === 0 ? 'off' : 'partly on';
    el.className = open > 0 ? 'live-on' : 'live-off';
  }

  async function openSocket(name, onMessage) {
    const t = await api('POST', '/session/ws-ticket');
    if (!check(t)) return;
    if (!state.active) return;
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const url = scheme + '//' + location.host + '/resource/' + name + '/events?ticket=' + encodeURIComponent(t.data.ticket);
    const ws = new WebSocket(url);
    const opened = Date.now();
    state.sockets.set(name, ws);
    ws.addEventListener('open', liveStatus);
    ws.addEventListener('message', (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      onMessage(message);
    });
    ws.addEventListener('close', (event) => {
      if (state.sockets.get(name) === ws) state.sockets.delete(name);
      liveStatus();
      // 4401: k_proxy ended the socket because the session ended; the reason says why.
      if (event.code === 4401) {
        const why = (event.reason || '').split(':')[1] || 'logged_out';
        if (state.endsAsked > 0) heldSocketEnd(why);
        else ended(why, null, true);
        return;
      }
      if (state.active && !state.leaving) {
        // 3 s, then twice as long after each drop that came soon after its open, up to
        // a minute: a k_server that keeps refusing is not asked every 3 s for ever.
        const lasted = Date.now() - opened;
        const wait = lasted > 60000 ? 3000 : Math.min(60000, (state.retryWait.get(name) || 1500) * 2);
        state.retryWait.set(name, wait);
        notice('Live updates for ' + name + ' stopped (' + (event.reason || 'connection closed') + '); reconnecting in ' + Math.round(wait / 1000) + ' s.');
        setTimeout(() => {
          if (state.active && !state.sockets.has(name)) openSocket(name, onMessage);
        }, wait);
      }
    });
  }

  function closeSockets() {
    for (const ws of state.sockets.values()) ws.close(1000, 'leaving');
    state.sockets.clear();
    liveStatus();
  }

  // ---- start -------------------------------------------------------------------------

  async function start() {
    $('login-form').addEventListener('submit', login);
    $('increment').addEventListener('click', increment);
    $('secret-form').addEventListener('submit', saveSecret);
    $('secret-hide').addEventListener('click', hideSecret);
    $('refresh-sessions').addEventListener('click', loadSessions);
    $('logout').addEventListener('click', () => logout(false));
    $('logout-all').addEventListener('click', () => logout(true));
    $('again').addEventListener('click', () => {
      notice('');
      show('login-view');
      $('username').value = state.user || '';
      $('username').focus();
    });
    try {
      const r = await fetch('/ui/config.json', { cache: 'no-store' });
      if (r.ok) config = await r.json();
    } catch (err) {
      // keep the defaults
    }
    // Another tab of this browser logged in (perhaps as someone else): the cookie now
    // names that session, so this page's view of its own is over.
    window.addEventListener('storage', (event) => {
      // (Removed: another tab's session ended; this one hears why from k_proxy.)
      if (event.key === OWN && state.active && event.newValue && event.newValue !== state.sessionId) {
        ended(null, 'A login in another tab of this browser replaced this page\'s session. Log in again to continue.');
      }
    });
    const status = await api('POST', '/session/status');
    if (status.ok && status.data.session_id && status.data.session_id === ownSession()) {
      enter(status.data);
    } else {
      if (status.ok) {
        notice('This browser holds a session that no page of this k_proxy started here (another site on this host can set its cookie); log in to replace it.');
      }
      show('login-view');
      $('username').focus();
    }
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
})();
