/*
 * wssgate operator console.
 *
 * Plain JavaScript, no framework, no build step. It talks only to the
 * operator API it was loaded from, with relative URLs ('clients', 'events',
 * 'metrics', 'broadcast', 'send/NAME', 'clients/NAME'), so it also works
 * behind a reverse proxy under a path prefix.
 *
 * AUTHENTICATION AND THE EVENT STREAM (a deliberate choice)
 *
 * The operator API may require `Authorization: Bearer TOKEN`. An EventSource
 * cannot set request headers, and a token put in the URL instead
 * (?token=...) leaks into access logs, proxy logs and the browser history.
 * So this console does NOT use EventSource: it reads `/events` with
 *   fetch('events', {headers: {Authorization: 'Bearer ' + token}, signal})
 * and parses the Server-Sent Events text from `response.body` itself
 * (ReadableStream + TextDecoder, see SseParser below): `data:` lines make
 * an event, a blank line ends it, lines starting with `:` are comments
 * (keep-alives, `: skipped N events`). When the stream ends or fails it is
 * reopened with a backoff of 1 s doubling up to 15 s, and the state is shown
 * in #stream-state (connecting | live | down). A stream silent for 45 s
 * (three keep-alives missed) is treated as dead and reopened.
 *
 * The token lives in sessionStorage only: this tab, gone when the tab
 * closes. Never in localStorage, cookies or URLs. At load the console tries
 * `GET clients` with the stored token, or with none: a 200 opens the
 * console (so with no token configured it opens directly), a 401 shows only
 * the login form. The login form retries with the token typed in and stores
 * it on success. A 401 later on (the token was changed on the gateway)
 * drops the token and every piece of data shown and returns to the login
 * form with a message. "Log out" does the same on request.
 *
 * Everything that comes from clients (names, texts, reasons, addresses) is
 * put into the page with textContent only, never as HTML.
 */
'use strict';

(() => {
  const TOKEN_KEY = 'wssgate.console.adminToken';
  const LOG_CAP = 1000;                  // event log entries kept
  const SHOWN_TEXT_MAX = 2000;           // characters of a message shown in the log
  const CHART_WINDOW_MS = 120000;        // the chart shows the last 120 s
  const METRICS_INTERVAL_MS = 1000;      // metrics poll period
  const METRICS_TIMEOUT_MS = 5000;
  const BACKOFF_MIN_MS = 1000;
  const BACKOFF_MAX_MS = 15000;
  const STREAM_SILENCE_MS = 45000;       // the gateway sends a keep-alive every 15 s
  const RELATIVE_REFRESH_MS = 15000;     // "N min ago" refresh
  const CLUSTER_REFRESH_MS = 5000;      // a cluster's table: the other nodes' clients

  const $ = (id) => document.getElementById(id);
  const el = {
    boot: $('boot'),
    login: $('login'),
    token: $('admin-token'),
    loginButton: $('login-button'),
    loginError: $('login-error'),
    console: $('console'),
    logout: $('logout'),
    streamState: $('stream-state'),
    clientsPanel: $('clients-panel'),
    clients: $('clients'),
    clientCount: $('client-count'),
    clientsEmpty: $('clients-empty'),
    sendForm: $('send-form'),
    sendName: $('send-name'),
    sendText: $('send-text'),
    sendButton: $('send-button'),
    broadcastForm: $('broadcast-form'),
    broadcastText: $('broadcast-text'),
    broadcastButton: $('broadcast-button'),
    kickForm: $('kick-form'),
    kickName: $('kick-name'),
    kickReason: $('kick-reason'),
    kickButton: $('kick-button'),
    result: $('result'),
    counters: $('counters'),
    chart: $('chart'),
    events: $('events'),
    eventCount: $('event-count'),
    clearEvents: $('clear-events'),
  };
  const tbody = el.clients.tBodies[0];
  const counter = {};
  for (const node of document.querySelectorAll('[data-counter]')) {
    counter[node.dataset.counter] = node;
  }

  /** Thrown by api() on a 401; the login form is already shown by then. */
  class Unauthorized extends Error {
    constructor() { super('401 missing or wrong bearer token'); }
  }

  const state = {
    token: '',            // '' = no token in use (none configured)
    generation: 0,        // bumped at every login and logout: older async work stops
    streamAbort: null,    // AbortController of the current /events fetch
    metricsAbort: null,
    metricsTimer: 0,
    relativeTimer: 0,
    clusterTimer: 0,
    clustered: false,
    resizeObserver: null,
    prevRouted: null,     // {t, value} of the last metrics poll
    samples: [],          // chart points {t, rate, clients}; null values are gaps
    sync: null,           // table events seen while a clients snapshot is loading
    syncAgain: false,
  };

  // ---------------------------------------------------------------------
  // Small helpers

  function storedToken() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; }
  }
  function storeToken(token) {
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch { /* storage unavailable: the token lives in memory only */ }
  }

  function errorText(e) {
    if (!e) return 'unknown error';
    if (e.name === 'AbortError') return 'aborted';
    if (e.name === 'TimeoutError') return 'timed out';
    return e.message || String(e);
  }

  function make(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function pad2(n) { return n < 10 ? '0' + n : String(n); }
  function clockTime(date) {
    return pad2(date.getHours()) + ':' + pad2(date.getMinutes()) + ':' + pad2(date.getSeconds());
  }
  function sameDay(a, b) {
    return a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() && a.getDate() === b.getDate();
  }
  function localTime(date) {
    return sameDay(date, new Date())
      ? clockTime(date)
      : date.toLocaleDateString() + ' ' + clockTime(date);
  }
  function relativeTime(ms) {
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 45) return 'just now';
    const min = Math.round(s / 60);
    if (min < 60) return min + ' min ago';
    const h = Math.floor(min / 60);
    if (h < 24) return h + ' h ' + (min % 60) + ' min ago';
    const d = Math.floor(h / 24);
    return d + (d === 1 ? ' day ago' : ' days ago');
  }

  function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

  /** Text of an HTTP error answer: "404 recipient not connected: bob". */
  async function httpError(response) {
    let body = '';
    try { body = (await response.text()).trim(); } catch { /* no body */ }
    return response.status + ' ' + (body || response.statusText || 'error');
  }

  /**
   * fetch() against the operator API with the token, if any. A 401 ends the
   * session (back to the login form) and throws Unauthorized.
   */
  async function api(path, init = {}) {
    const generation = state.generation;
    const headers = new Headers(init.headers || {});
    if (state.token) headers.set('Authorization', 'Bearer ' + state.token);
    const response = await fetch(path, { ...init, headers, cache: 'no-store', credentials: 'omit' });
    if (response.status === 401) {
      if (generation === state.generation) {
        loseAuthorization('The admin token is no longer accepted (it may have been changed). Enter it again.');
      }
      throw new Unauthorized();
    }
    return response;
  }

  // ---------------------------------------------------------------------
  // Login, log out, session lifetime

  function showLogin(message) {
    el.boot.hidden = true;
    el.console.hidden = true;
    el.login.hidden = false;
    el.loginError.textContent = message || '';
    el.token.value = '';
    el.token.focus();
  }

  function setLoginBusy(busy) {
    el.loginButton.disabled = busy;
    el.token.disabled = busy;
  }

  /** Tries `token` ('' = none) against GET clients; opens the console on 200. */
  async function attempt(token, refusedMessage) {
    setLoginBusy(true);
    let response;
    try {
      const headers = token ? { Authorization: 'Bearer ' + token } : {};
      response = await fetch('clients', { headers, cache: 'no-store', credentials: 'omit' });
    } catch (e) {
      setLoginBusy(false);
      showLogin('Cannot reach the operator API (' + errorText(e) + '). Try again.');
      return;
    }
    setLoginBusy(false);
    if (response.status === 401) {
      storeToken('');
      showLogin(refusedMessage);
      return;
    }
    if (!response.ok) {
      showLogin('The operator API answered ' + await httpError(response) + '.');
      return;
    }
    let rows = [];
    try { rows = await response.json(); } catch { rows = []; }
    storeToken(token);
    state.clustered = response.headers.has('x-wssgate-node');
    openConsole(token, Array.isArray(rows) ? rows : []);
  }

  function openConsole(token, rows) {
    stopSession();
    const generation = state.generation;
    state.token = token;
    clearData();
    el.token.value = '';
    el.boot.hidden = true;
    el.login.hidden = true;
    el.loginError.textContent = '';
    el.console.hidden = false;
    // With no token configured there is nothing to log out of.
    el.logout.hidden = !token;
    rebuildTable(rows);
    streamLoop(generation);
    metricsLoop(generation);
    state.relativeTimer = setInterval(refreshRelativeTimes, RELATIVE_REFRESH_MS);
    state.clusterTimer = setInterval(() => {
      if (state.clustered && !state.sync) resync(generation);
    }, CLUSTER_REFRESH_MS);
    drawChart();
  }

  /** Stops every loop and request of the current session. */
  function stopSession() {
    state.generation += 1;
    if (state.streamAbort) state.streamAbort.abort();
    if (state.metricsAbort) state.metricsAbort.abort();
    state.streamAbort = null;
    state.metricsAbort = null;
    clearTimeout(state.metricsTimer);
    clearInterval(state.relativeTimer);
    clearInterval(state.clusterTimer);
    state.sync = null;
    state.syncAgain = false;
  }

  /** Forgets everything shown: clients, events, counters, chart, results. */
  function clearData() {
    tbody.replaceChildren();
    updateClientCount();
    el.events.replaceChildren();
    el.eventCount.textContent = '0';
    el.result.textContent = '';
    delete el.result.dataset.ok;
    for (const node of Object.values(counter)) node.textContent = '–';
    el.counters.classList.remove('stale');
    el.clientsPanel.classList.remove('stale');
    state.prevRouted = null;
    state.samples = [];
    drawChart();
    setStreamState('connecting', 'connecting');
    for (const input of [el.sendName, el.sendText, el.broadcastText, el.kickName, el.kickReason]) {
      input.value = '';
    }
  }

  function loseAuthorization(message) {
    stopSession();
    state.token = '';
    storeToken('');
    clearData();
    showLogin(message);
  }

  // ---------------------------------------------------------------------
  // The event stream

  function setStreamState(name, text) {
    el.streamState.dataset.state = name;
    el.streamState.querySelector('.state-text').textContent = text;
  }

  /**
   * A minimal Server-Sent Events parser (the WHATWG "event stream" rules
   * that wssgate uses): lines end in CRLF, LF or CR; `data:` lines are
   * joined with LF; a blank line dispatches; `:` starts a comment.
   */
  class SseParser {
    constructor(onData, onComment) {
      this.buffer = '';
      this.data = [];
      this.onData = onData;
      this.onComment = onComment;
    }

    push(text) {
      this.buffer += text;
      const terminator = /\r\n|\r|\n/g;
      let start = 0;
      let match;
      while ((match = terminator.exec(this.buffer)) !== null) {
        // A CR at the very end may be the first half of a CRLF: wait.
        if (match[0] === '\r' && match.index === this.buffer.length - 1) break;
        this.line(this.buffer.slice(start, match.index));
        start = terminator.lastIndex;
      }
      this.buffer = this.buffer.slice(start);
    }

    line(line) {
      if (line === '') {
        if (this.data.length > 0) {
          const data = this.data.join('\n');
          this.data = [];
          this.onData(data);
        }
        return;
      }
      if (line[0] === ':') {
        this.onComment(line.slice(1).replace(/^ /, ''));
        return;
      }
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value[0] === ' ') value = value.slice(1);
      if (field === 'data') this.data.push(value);
      // `event`, `id` and `retry` are not used by wssgate.
    }
  }

  async function streamLoop(generation) {
    let backoff = BACKOFF_MIN_MS;
    let failures = 0;
    while (generation === state.generation) {
      setStreamState('connecting', 'connecting');
      const controller = new AbortController();
      state.streamAbort = controller;
      let subscribed = false;
      let why = 'the stream ended';
      let watchdog = 0;
      const arm = () => {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => controller.abort(), STREAM_SILENCE_MS);
      };
      const onData = (data) => {
        let event;
        try {
          event = JSON.parse(data);
        } catch {
          logEntry('unknown', [data]);
          return;
        }
        if (event && event.type === 'subscribed') {
          subscribed = true;
          backoff = BACKOFF_MIN_MS;
          failures = 0;
          setStreamState('live', 'live');
          logEntry('subscribed', ['event stream live']);
          resync(generation);
          return;
        }
        handleEvent(event);
      };
      const onComment = (comment) => {
        const skipped = /^skipped (\d+) events?/.exec(comment);
        if (skipped) {
          logEntry('skipped', ['skipped ' + skipped[1] + ' events (this console fell behind); reloading the clients list']);
          resync(generation);
        }
        // Other comments are keep-alives.
      };
      try {
        arm();
        const response = await api('events', {
          headers: { Accept: 'text/event-stream' },
          signal: controller.signal,
        });
        if (!response.ok) throw new Error(await httpError(response));
        if (!response.body) throw new Error('no response body');
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        const parser = new SseParser(onData, onComment);
        for (;;) {
          const { value, done } = await reader.read();
          if (generation !== state.generation) {
            reader.cancel().catch(() => {});
            return;
          }
          if (done) break;
          arm();
          parser.push(decoder.decode(value, { stream: true }));
        }
        parser.push(decoder.decode());
      } catch (e) {
        if (e instanceof Unauthorized || generation !== state.generation) return;
        why = controller.signal.aborted ? 'no data for ' + STREAM_SILENCE_MS / 1000 + ' s' : errorText(e);
      } finally {
        clearTimeout(watchdog);
      }
      if (generation !== state.generation) return;
      controller.abort();
      el.clientsPanel.classList.add('stale');
      if (subscribed) {
        logEntry('stream', ['event stream lost (' + why + '); reconnecting']);
      } else if (failures === 0) {
        logEntry('stream', ['event stream unavailable (' + why + '); retrying']);
      }
      failures += 1;
      // Wait, showing the countdown.
      for (let left = Math.round(backoff / 1000); left > 0; left -= 1) {
        if (generation !== state.generation) return;
        setStreamState('down', 'down, retry in ' + left + ' s');
        await sleep(1000);
      }
      backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    }
  }

  function handleEvent(event) {
    if (!event || typeof event !== 'object') return;
    const str = (v) => (v === undefined || v === null ? '' : String(v));
    switch (event.type) {
      case 'connect': {
        tableEvent(event);
        const parts = [{ who: event.name }, ' connected from ' + str(event.remote) + ' via ' + str(event.listener)];
        if (event.tls === true) parts.push(' (TLS)');
        if (event.provisional === true) parts.push(' (provisional name)');
        logEntry('connect', parts);
        break;
      }
      case 'disconnect':
        tableEvent(event);
        logEntry('disconnect', [{ who: event.name }, ' (' + str(event.remote) + ') disconnected: ' + str(event.reason)]);
        break;
      case 'rename':
        tableEvent(event);
        logEntry('rename', [{ who: event.from }, ' \u2192 ', { who: event.to }]);
        break;
      case 'message':
        logEntry('message', [{ who: event.name }, ': ', { text: str(event.text) }], str(event.remote));
        break;
      case 'binary': {
        const b64 = str(event.base64);
        const padding = b64.endsWith('==') ? 2 : b64.endsWith('=') ? 1 : 0;
        const bytes = Math.max(0, Math.floor(b64.length / 4) * 3 - padding);
        const preview = b64.length > 64 ? b64.slice(0, 64) + '…' : b64;
        logEntry('binary', [{ who: event.name }, ': ' + bytes + ' bytes binary ', { muted: preview }], str(event.remote));
        break;
      }
      case 'error':
        logEntry('error', [{ who: event.name }, ': ' + str(event.msg)], str(event.remote));
        break;
      case 'tls_reload':
        if (event.error) {
          logEntry('tls_reload', ['TLS certificate reload failed on listener ' + str(event.listener) + ': ' + str(event.error) + ' (the old certificate is kept)'], '', true);
        } else {
          logEntry('tls_reload', ['TLS certificate reloaded on listener ' + str(event.listener)]);
        }
        break;
      case 'token_keys_reload':
        if (event.error) {
          logEntry('token_keys_reload', ['token keys reload failed: ' + str(event.error) + ' (the keys in use are kept)'], '', true);
        } else {
          logEntry('token_keys_reload', ['token keys reloaded']);
        }
        break;
      case 'shutdown':
        logEntry('shutdown', ['gateway shutting down: every session is closed with 1001']);
        tbody.replaceChildren();
        updateClientCount();
        break;
      default:
        logEntry(str(event.type) || 'unknown', [JSON.stringify(event)]);
    }
  }

  // ---------------------------------------------------------------------
  // The clients table

  function rowsOf(name, remote) {
    return Array.from(tbody.rows).filter(
      (row) => row.dataset.name === name && (remote === undefined || row.dataset.remote === remote));
  }

  function makeRow(client) {
    const name = String(client.name);
    const remote = String(client.remote ?? '');
    const row = document.createElement('tr');
    row.dataset.name = name;
    row.dataset.remote = remote;

    const nameCell = make('td', 'name');
    nameCell.append(make('span', 'client-name', name));
    if (client.provisional === true) {
      row.dataset.provisional = 'true';
      nameCell.append(make('span', 'badge', 'provisional'));
    }
    row.append(nameCell);
    row.append(make('td', 'remote', remote));
    row.append(make('td', 'listener', client.listener ?? ''));
    const tls = make('td', 'tls', client.tls === true ? 'yes' : client.tls === false ? 'no' : '?');
    tls.dataset.tls = String(client.tls === true);
    row.append(tls);
    // The node, when the gateway is one of a cluster ([cluster]): its rows
    // carry `node`, and the column shows.
    row.append(make('td', 'node', client.node ?? ''));

    const since = make('td', 'since');
    const at = client.connected_at ? new Date(client.connected_at) : null;
    if (at && !Number.isNaN(at.getTime())) {
      const time = make('time', null, localTime(at));
      time.dateTime = at.toISOString();
      time.title = at.toString();
      since.append(time, make('span', 'relative', relativeTime(at.getTime())));
      row.dataset.since = String(at.getTime());
    } else {
      since.textContent = '–';
    }
    row.append(since);

    const actions = make('td', 'actions');
    const message = make('button', 'message small', 'message');
    message.type = 'button';
    message.title = 'send a message to ' + name;
    const kick = make('button', 'kick small danger-quiet', 'kick');
    kick.type = 'button';
    kick.title = 'prepare to kick ' + name;
    actions.append(message, kick);
    row.append(actions);
    return row;
  }

  function setRowName(row, name) {
    row.dataset.name = name;
    row.querySelector('.client-name').textContent = name;
    const badge = row.querySelector('.badge');
    if (badge) badge.remove();
    delete row.dataset.provisional;
    for (const button of row.querySelectorAll('button')) {
      button.title = (button.classList.contains('kick') ? 'prepare to kick ' : 'send a message to ') + name;
    }
  }

  function rebuildTable(rows) {
    // A cluster's rows name their node. The events stream only tells this
    // node's connects and disconnects, so the table of a cluster is also
    // reloaded every CLUSTER_REFRESH_MS for the other nodes' clients.
    // (`state.clustered`: the answer named its node in X-Wssgate-Node.)
    el.clients.classList.toggle('clustered', state.clustered);
    tbody.replaceChildren(...rows.filter((c) => c && c.name !== undefined).map(makeRow));
    el.clientsPanel.classList.remove('stale');
    updateClientCount();
  }

  /**
   * Applies connect / disconnect / rename. `replay` is true when the event
   * is applied again over a fresh snapshot that may already include it, so
   * every change must then be idempotent.
   */
  function applyTableEvent(event, replay) {
    switch (event.type) {
      case 'connect': {
        const name = String(event.name);
        const remote = String(event.remote ?? '');
        if (replay && rowsOf(name, remote).length > 0) return;
        tbody.append(makeRow({ connected_at: new Date().toISOString(), ...event, name, remote }));
        break;
      }
      case 'disconnect': {
        const row = rowsOf(String(event.name), String(event.remote ?? ''))[0];
        if (row) row.remove();
        break;
      }
      case 'rename': {
        const rows = rowsOf(String(event.from));
        const row = rows.find((r) => r.dataset.provisional === 'true') || rows[0];
        if (row) setRowName(row, String(event.to));
        break;
      }
      default:
        return;
    }
    updateClientCount();
  }

  function tableEvent(event) {
    applyTableEvent(event, false);
    if (state.sync) state.sync.push(event);
  }

  /**
   * Reloads the table from GET clients. Events that arrive meanwhile are
   * applied at once and again, idempotently, over the snapshot.
   */
  async function resync(generation) {
    if (state.sync) {
      state.syncAgain = true;
      return;
    }
    state.sync = [];
    try {
      const response = await api('clients');
      if (!response.ok) throw new Error(await httpError(response));
      state.clustered = response.headers.has('x-wssgate-node');
      const rows = await response.json();
      if (generation !== state.generation) return;
      const seen = state.sync || [];
      rebuildTable(Array.isArray(rows) ? rows : []);
      for (const event of seen) applyTableEvent(event, true);
    } catch (e) {
      if (e instanceof Unauthorized || generation !== state.generation) return;
      logEntry('stream', ['could not load the clients list: ' + errorText(e)]);
    } finally {
      if (generation === state.generation) {
        state.sync = null;
        if (state.syncAgain) {
          state.syncAgain = false;
          resync(generation);
        }
      }
    }
  }

  function updateClientCount() {
    const n = tbody.rows.length;
    el.clientCount.textContent = String(n);
    el.clientsEmpty.hidden = n > 0;
  }

  function refreshRelativeTimes() {
    for (const row of tbody.rows) {
      const since = Number(row.dataset.since);
      const relative = row.querySelector('.relative');
      if (relative && Number.isFinite(since)) relative.textContent = relativeTime(since);
    }
  }

  el.clients.addEventListener('click', (e) => {
    const button = e.target.closest('button');
    const row = button && button.closest('tr');
    if (!row || !tbody.contains(row)) return;
    const name = row.dataset.name;
    if (button.classList.contains('message')) {
      el.sendName.value = name;
      el.sendText.focus();
    } else if (button.classList.contains('kick')) {
      el.kickName.value = name;
      el.kickReason.focus();
    }
  });

  // ---------------------------------------------------------------------
  // The event log

  /** Short labels for the log's type column (data-type keeps the event type). */
  const TAG_LABELS = {
    tls_reload: 'tls reload',
    token_keys_reload: 'keys reload',
    subscribed: 'stream',
  };

  /**
   * Appends a log entry. `parts` are strings, {who: name}, {text: message}
   * or {muted: text}; all are inserted as text, never as HTML.
   */
  function logEntry(type, parts, remote, failed) {
    const list = el.events;
    const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 48;
    const item = document.createElement('li');
    item.dataset.type = type;
    if (failed) item.dataset.failed = 'true';
    const now = new Date();
    const time = make('time', 'at', clockTime(now));
    time.dateTime = now.toISOString();
    const body = make('span', 'body');
    for (const part of parts) {
      if (typeof part === 'string') {
        body.append(document.createTextNode(part));
      } else if (part.who !== undefined) {
        body.append(make('span', 'who', String(part.who)));
      } else if (part.text !== undefined) {
        let text = part.text;
        if (text.length > SHOWN_TEXT_MAX) {
          text = text.slice(0, SHOWN_TEXT_MAX) + '… (' + (part.text.length - SHOWN_TEXT_MAX) + ' more characters)';
        }
        body.append(make('span', 'text', text));
      } else if (part.muted !== undefined) {
        body.append(make('span', 'muted', part.muted));
      }
    }
    if (remote) item.title = remote;
    item.append(time, make('span', 'tag', TAG_LABELS[type] || type.replace(/_/g, ' ')), body);
    list.append(item);
    while (list.childElementCount > LOG_CAP) list.firstElementChild.remove();
    el.eventCount.textContent = String(list.childElementCount);
    if (nearBottom) list.scrollTop = list.scrollHeight;
  }

  el.clearEvents.addEventListener('click', () => {
    el.events.replaceChildren();
    el.eventCount.textContent = '0';
  });

  // ---------------------------------------------------------------------
  // Operator actions

  function showResult(text, ok) {
    el.result.textContent = text;
    el.result.dataset.ok = String(ok);
  }

  /** Runs one action with its button disabled; shows its outcome in #result. */
  async function act(button, run) {
    const generation = state.generation;
    button.disabled = true;
    try {
      const [text, ok] = await run();
      if (generation === state.generation) showResult(text, ok);
    } catch (e) {
      if (e instanceof Unauthorized || generation !== state.generation) return;
      showResult('request failed: ' + errorText(e), false);
    } finally {
      button.disabled = false;
    }
  }

  el.sendForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const name = el.sendName.value;
    const text = el.sendText.value;
    if (name === '') {
      showResult('enter the name of the client to send to', false);
      el.sendName.focus();
      return;
    }
    act(el.sendButton, async () => {
      const response = await api('send/' + encodeURIComponent(name), {
        method: 'POST',
        headers: { 'Content-Type': 'text/plain; charset=utf-8' },
        body: text,
      });
      if (!response.ok) return [await httpError(response), false];
      const answer = await response.json();
      if (el.sendText.value === text) el.sendText.value = '';
      return ['sent to ' + name + ': delivered ' + answer.delivered, true];
    });
  });

  el.broadcastForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = el.broadcastText.value;
    if (text === '') {
      showResult('enter the text to broadcast', false);
      el.broadcastText.focus();
      return;
    }
    act(el.broadcastButton, async () => {
      const response = await api('broadcast', {
        method: 'POST',
        headers: { 'Content-Type': 'text/plain; charset=utf-8' },
        body: text,
      });
      if (!response.ok) return [await httpError(response), false];
      const answer = await response.json();
      if (el.broadcastText.value === text) el.broadcastText.value = '';
      return ['broadcast: delivered ' + answer.delivered, true];
    });
  });

  el.kickForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const name = el.kickName.value;
    const reason = el.kickReason.value;
    if (name === '') {
      showResult('enter the name of the client to kick', false);
      el.kickName.focus();
      return;
    }
    act(el.kickButton, async () => {
      let url = 'clients/' + encodeURIComponent(name);
      if (reason !== '') url += '?reason=' + encodeURIComponent(reason);
      const response = await api(url, { method: 'DELETE' });
      if (!response.ok) return [await httpError(response), false];
      const answer = await response.json();
      const n = Number(answer.closed);
      if (el.kickName.value === name) {
        el.kickName.value = '';
        el.kickReason.value = '';
      }
      return ['kicked ' + name + ' (' + n + (n === 1 ? ' session)' : ' sessions)'), true];
    });
  });

  // ---------------------------------------------------------------------
  // Metrics: counters and chart

  /**
   * Parses OpenMetrics / Prometheus text: `name{labels} value [timestamp]`
   * lines; `#` lines are skipped except `# TYPE`, which tells which
   * families exist (a family with no samples yet counts as 0).
   */
  function parseMetrics(text) {
    const samples = new Map();   // sample name -> [{labels, value}]
    const families = new Set();  // declared family names
    for (const raw of text.split('\n')) {
      const line = raw.trim();
      if (line === '') continue;
      if (line[0] === '#') {
        const type = /^#\s*TYPE\s+(\S+)/.exec(line);
        if (type) families.add(type[1]);
        continue;
      }
      let name;
      let labels = {};
      let rest;
      const brace = line.indexOf('{');
      const space = line.search(/\s/);
      if (brace >= 0 && (space < 0 || brace < space)) {
        name = line.slice(0, brace);
        // Find the closing brace outside quoted label values.
        let i = brace + 1;
        let quoted = false;
        for (; i < line.length; i += 1) {
          const c = line[i];
          if (quoted) {
            if (c === '\\') i += 1;
            else if (c === '"') quoted = false;
          } else if (c === '"') {
            quoted = true;
          } else if (c === '}') {
            break;
          }
        }
        labels = parseLabels(line.slice(brace + 1, i));
        rest = line.slice(i + 1).trim();
      } else {
        if (space < 0) continue;
        name = line.slice(0, space);
        rest = line.slice(space).trim();
      }
      const value = Number(rest.split(/\s+/)[0]);
      if (!Number.isFinite(value)) continue;
      if (!samples.has(name)) samples.set(name, []);
      samples.get(name).push({ labels, value });
    }
    return { samples, families };
  }

  function parseLabels(text) {
    const labels = {};
    const re = /([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"/g;
    let m;
    while ((m = re.exec(text)) !== null) {
      labels[m[1]] = m[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    }
    return labels;
  }

  /**
   * Sum of a series over its labels. The gateway leaves a labelled family
   * out of /metrics until its first sample (no errors yet: no
   * wssgate_errors_total at all), so a family missing from an answer that
   * has other samples counts 0; null only when the answer had no samples.
   */
  function total(metrics, sample, family) {
    const list = metrics.samples.get(sample);
    if (list) return list.reduce((sum, s) => sum + s.value, 0);
    const known = metrics.families.has(family) || metrics.families.has(sample);
    return known || metrics.samples.size > 0 ? 0 : null;
  }

  function formatCount(v) {
    return v === null ? '–' : String(Math.round(v));
  }
  function formatRate(v) {
    if (v === null) return '–';
    if (v < 10) return v.toFixed(1);
    return String(Math.round(v));
  }

  function applyMetrics(metrics, t) {
    const clients = total(metrics, 'wssgate_connections', 'wssgate_connections');
    const routed = total(metrics, 'wssgate_messages_routed_total', 'wssgate_messages_routed');
    const accepted = total(metrics, 'wssgate_connections_accepted_total', 'wssgate_connections_accepted');
    const errors = total(metrics, 'wssgate_errors_total', 'wssgate_errors');

    let rate = null;
    const prev = state.prevRouted;
    if (routed !== null && prev && t > prev.t && routed >= prev.value) {
      rate = (routed - prev.value) / ((t - prev.t) / 1000);
    }
    state.prevRouted = routed === null ? null : { t, value: routed };

    counter.clients.textContent = formatCount(clients);
    counter.rate.textContent = formatRate(rate);
    counter.routed.textContent = formatCount(routed);
    counter.accepted.textContent = formatCount(accepted);
    counter.errors.textContent = formatCount(errors);
    el.counters.classList.remove('stale');

    addSample({ t, rate, clients });
  }

  function metricsFailed(t) {
    el.counters.classList.add('stale');
    state.prevRouted = null;
    counter.rate.textContent = '–';
    addSample({ t, rate: null, clients: null });
  }

  function addSample(sample) {
    state.samples.push(sample);
    const oldest = sample.t - CHART_WINDOW_MS - 5000;
    while (state.samples.length > 0 && state.samples[0].t < oldest) state.samples.shift();
    drawChart();
  }

  function metricsLoop(generation) {
    const tick = async () => {
      if (generation !== state.generation) return;
      const started = performance.now();
      const controller = new AbortController();
      state.metricsAbort = controller;
      const timeout = setTimeout(() => controller.abort(), METRICS_TIMEOUT_MS);
      try {
        const response = await api('metrics', { signal: controller.signal });
        if (!response.ok) throw new Error(await httpError(response));
        const text = await response.text();
        if (generation !== state.generation) return;
        applyMetrics(parseMetrics(text), performance.now());
      } catch (e) {
        if (e instanceof Unauthorized || generation !== state.generation) return;
        metricsFailed(performance.now());
      } finally {
        clearTimeout(timeout);
      }
      if (generation !== state.generation) return;
      const elapsed = performance.now() - started;
      state.metricsTimer = setTimeout(tick, Math.max(0, METRICS_INTERVAL_MS - elapsed));
    };
    tick();
  }

  /** A round upper bound for an axis: 1, 2, 5 times a power of ten. */
  function niceMax(v, floor) {
    const top = Math.max(v, floor);
    const power = Math.pow(10, Math.floor(Math.log10(top)));
    const f = top / power;
    const nice = f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10;
    return nice * power;
  }

  function axisLabel(v) {
    if (v >= 10000) return (v / 1000).toFixed(0) + 'k';
    return Number.isInteger(v) ? String(v) : v.toFixed(1);
  }

  const CHART_COLORS = {
    rate: '#2563eb',
    clients: '#16a34a',
    grid: '#e5e7eb',
    axis: '#9ca3af',
    text: '#6b7280',
  };

  function drawChart() {
    const canvas = el.chart;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    const dpr = window.devicePixelRatio || 1;
    const pixelWidth = Math.round(width * dpr);
    const pixelHeight = Math.round(height * dpr);
    if (canvas.width !== pixelWidth || canvas.height !== pixelHeight) {
      canvas.width = pixelWidth;
      canvas.height = pixelHeight;
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);

    const pad = { left: 40, right: 36, top: 24, bottom: 22 };
    const plotW = Math.max(10, width - pad.left - pad.right);
    const plotH = Math.max(10, height - pad.top - pad.bottom);
    const now = performance.now();
    const visible = state.samples.filter((s) => s.t >= now - CHART_WINDOW_MS - 1000);

    let maxRate = 0;
    let maxClients = 0;
    for (const s of visible) {
      if (s.rate !== null) maxRate = Math.max(maxRate, s.rate);
      if (s.clients !== null) maxClients = Math.max(maxClients, s.clients);
    }
    const rateTop = niceMax(maxRate, 1);
    const clientsTop = niceMax(maxClients, 2);

    const x = (t) => pad.left + plotW * (1 - (now - t) / CHART_WINDOW_MS);
    const yRate = (v) => pad.top + plotH * (1 - v / rateTop);
    const yClients = (v) => pad.top + plotH * (1 - v / clientsTop);

    ctx.font = '11px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
    ctx.lineWidth = 1;

    // Horizontal grid and the two y axes' labels.
    ctx.textBaseline = 'middle';
    for (const f of [0, 0.5, 1]) {
      const y = Math.round(pad.top + plotH * (1 - f)) + 0.5;
      ctx.strokeStyle = f === 0 ? CHART_COLORS.axis : CHART_COLORS.grid;
      ctx.beginPath();
      ctx.moveTo(pad.left, y);
      ctx.lineTo(pad.left + plotW, y);
      ctx.stroke();
      ctx.fillStyle = CHART_COLORS.rate;
      ctx.textAlign = 'right';
      ctx.fillText(axisLabel(rateTop * f), pad.left - 6, y);
      ctx.fillStyle = CHART_COLORS.clients;
      ctx.textAlign = 'left';
      ctx.fillText(axisLabel(clientsTop * f), pad.left + plotW + 6, y);
    }

    // Time axis: seconds ago.
    ctx.fillStyle = CHART_COLORS.text;
    ctx.textBaseline = 'top';
    for (const ago of [120, 90, 60, 30, 0]) {
      const px = pad.left + plotW * (1 - ago / 120);
      ctx.strokeStyle = CHART_COLORS.grid;
      ctx.beginPath();
      ctx.moveTo(Math.round(px) + 0.5, pad.top);
      ctx.lineTo(Math.round(px) + 0.5, pad.top + plotH);
      ctx.stroke();
      ctx.textAlign = ago === 120 ? 'left' : ago === 0 ? 'right' : 'center';
      ctx.fillText(ago === 0 ? 'now' : '-' + ago + ' s', px, pad.top + plotH + 5);
    }

    // The two lines, broken where a poll failed.
    ctx.save();
    ctx.beginPath();
    ctx.rect(pad.left, pad.top - 2, plotW, plotH + 4);
    ctx.clip();
    const line = (key, y, color) => {
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      ctx.lineJoin = 'round';
      ctx.beginPath();
      let drawing = false;
      for (const s of visible) {
        const v = s[key];
        if (v === null) {
          drawing = false;
          continue;
        }
        if (drawing) ctx.lineTo(x(s.t), y(v));
        else ctx.moveTo(x(s.t), y(v));
        drawing = true;
      }
      ctx.stroke();
    };
    line('clients', yClients, CHART_COLORS.clients);
    line('rate', yRate, CHART_COLORS.rate);
    ctx.restore();

    // Legend.
    ctx.textBaseline = 'middle';
    ctx.textAlign = 'left';
    let lx = pad.left;
    for (const [label, color] of [['messages / s (left)', CHART_COLORS.rate], ['clients (right)', CHART_COLORS.clients]]) {
      ctx.fillStyle = color;
      ctx.fillRect(lx, 8, 14, 3);
      ctx.fillStyle = CHART_COLORS.text;
      ctx.fillText(label, lx + 19, 10);
      lx += 19 + ctx.measureText(label).width + 18;
    }
  }

  // ---------------------------------------------------------------------
  // Start

  el.login.addEventListener('submit', (e) => {
    e.preventDefault();
    const token = el.token.value.trim();
    attempt(token, token
      ? 'Wrong token: the operator API refused it (401).'
      : 'This gateway needs the admin token.');
  });

  el.logout.addEventListener('click', () => {
    stopSession();
    state.token = '';
    storeToken('');
    clearData();
    showLogin('Logged out. The token was removed from this tab.');
  });

  if (typeof ResizeObserver === 'function') {
    state.resizeObserver = new ResizeObserver(() => drawChart());
    state.resizeObserver.observe(el.chart);
  } else {
    window.addEventListener('resize', drawChart);
  }

  const initial = storedToken();
  attempt(initial, initial
    ? 'The stored token is no longer accepted (it may have been changed). Enter the admin token.'
    : '');
})();
