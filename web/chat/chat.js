// wssgate chat page: a browser client for the gateway it is served by.
//
// The wire contract is docs/PROTOCOL.md; the input line follows the
// command-line client (crates/client/src/chat/text.rs): "@name text",
// "#room text", /join, /leave, /list, /raw, //text, /help.
//
// Text that comes from the socket (names, messages, reasons) is only ever
// put into the page as text nodes (textContent), never parsed as HTML.
'use strict';

(function () {
  // ---------------------------------------------------------------- set-up

  const $ = (id) => document.getElementById(id);
  const el = {
    login: $('login'),
    name: $('name'),
    token: $('token'),
    connect: $('connect'),
    disconnect: $('disconnect'),
    status: $('status'),
    hint: $('status-hint'),
    log: $('log'),
    who: $('who'),
    whoCount: $('who-count'),
    refresh: $('refresh'),
    rooms: $('rooms'),
    joinForm: $('join-form'),
    joinRoom: $('join-room'),
    join: $('join'),
    composer: $('composer'),
    input: $('input'),
    send: $('send'),
  };

  const GATEWAY = '@gateway';
  const LIST_ID = 'page:list'; // the page's own who-list requests
  const NAME_KEY = 'wssgate.chat.name';
  const MAX_NAME_BYTES = 128;
  const MAX_ROOM_BYTES = 128;
  const MAX_LOG_LINES = 2000;
  const MAX_PENDING = 1000;
  const MAX_HISTORY = 100;
  const LIST_EVERY_MS = 15000; // who-list refresh while connected
  const STABLE_MS = 10000; // open this long: the backoff starts again at 1 s
  const BACKOFF_MAX_MS = 30000;

  const HELP = [
    'commands:',
    '  text              plain text to the server (the operator)',
    '  @name text        private message to name',
    '  #room text        message to a room you joined',
    '  /join #room       join a room (the # may be left out)',
    '  /leave #room      leave a room',
    '  /list [#room]     names connected (or members of a room)',
    '  /raw TEXT         send TEXT as is (e.g. JSON, or text starting with @ or #)',
    '  //text            plain text starting with /',
    '  /help             this help',
    '  /quit             disconnect',
    'Click a name to write to it, a room to write in it. Up/Down recall earlier lines.',
  ].join('\n');

  // What a close code means, in a few words.
  const CLOSE_MEANING = {
    1000: 'normal closure (or idle timeout)',
    1001: 'gateway shutting down',
    1002: 'protocol error',
    1005: 'closed without a status code',
    1006: 'connection lost or refused (name taken? origin not allowed? see the gateway log)',
    1007: 'invalid UTF-8',
    1008: 'policy: rate limit or token expired',
    1009: 'message too big',
    1011: 'internal error',
    1013: 'slow consumer: this page did not read fast enough',
    4000: 'replaced by a newer session with the same name',
    4001: 'disconnected by the operator',
  };
  // Closes after which reconnecting by itself cannot help or is unwanted.
  const NO_RECONNECT = new Set([1008, 4000, 4001]);

  // ---------------------------------------------------------------- state

  let ws = null; // the current socket (connecting or open), or null
  let opened = false; // the current socket reached "open"
  let retrying = false; // the current socket is an automatic reconnect
  let me = ''; // the name of the current (or last) session
  let token = '';
  let seq = 0; // request ids: page:1, page:2, ...
  const pending = new Map(); // id -> {input, join?: room, list?: true}
  let who = new Set();
  const rooms = []; // joined rooms, in join order
  let attempt = 0; // reconnect backoff exponent
  let reconnectTimer = null;
  let countdownTimer = null;
  let reconnectAt = 0;
  let lastClose = '';
  let lastCloseHint = '';
  let listTimer = null;
  let stableTimer = null;
  const history = [];
  let historyPos = 0;

  // ---------------------------------------------------------------- helpers

  const encoder = new TextEncoder();
  const byteLength = (s) => encoder.encode(s).length;
  const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
  const INVISIBLE = /[\p{Cf}\u034f\u115f\u1160\u3164\uffa0]/u;

  function pad2(n) {
    return String(n).padStart(2, '0');
  }

  function clock(d) {
    return pad2(d.getHours()) + ':' + pad2(d.getMinutes()) + ':' + pad2(d.getSeconds());
  }

  // A JSON value as display text: strings bare, anything else as JSON.
  function textOf(value) {
    if (typeof value === 'string') return value;
    if (value === undefined) return '';
    try {
      return JSON.stringify(value);
    } catch (_) {
      return String(value);
    }
  }

  function namesOf(value) {
    return Array.isArray(value) ? value.map(textOf) : [];
  }

  // "a, b, c" shortened to the first `max` names.
  function nameList(names, max) {
    if (max === undefined || names.length <= max) return names.join(', ');
    return names.slice(0, max).join(', ') + ' … and ' + (names.length - max) + ' more';
  }

  // The first word and the rest without its leading blanks.
  function splitWord(s) {
    const i = s.search(/\s/);
    if (i < 0) return [s, ''];
    return [s.slice(0, i), s.slice(i + 1).replace(/^\s+/, '')];
  }

  // Why a room name is refused, or '' (wssgate_wire::check_room).
  function roomProblem(room) {
    const bytes = byteLength(room);
    if (room.startsWith('#') && bytes > 1 && bytes <= MAX_ROOM_BYTES && !CONTROL.test(room)) {
      return '';
    }
    return 'invalid room: ' + JSON.stringify(room) + " (a room is '#' and 1 to " +
      (MAX_ROOM_BYTES - 1) + ' bytes of text)';
  }

  // A room argument; the # may be left out.
  function roomArg(arg) {
    return arg.startsWith('#') ? arg : '#' + arg;
  }

  // Why the gateway would refuse a name, or '' (PROTOCOL.md 2.2). The
  // gateway answers a bad name with an HTTP 400 the page cannot read, so
  // the page says it first.
  function nameProblem(name) {
    if (name === '') return 'enter a name first';
    if (byteLength(name) > MAX_NAME_BYTES) return 'the name is longer than 128 bytes';
    if (CONTROL.test(name)) return 'the name contains a control character';
    const invisible = name.match(INVISIBLE);
    if (invisible) {
      const hex = invisible[0].codePointAt(0).toString(16).toUpperCase().padStart(4, '0');
      return 'the name contains the invisible formatting character U+' + hex;
    }
    if (/[^\S ]/.test(name) || name !== name.trim()) {
      return 'the name starts or ends with whitespace, or holds whitespace other than a plain space';
    }
    if (name.startsWith('@')) return "names starting with '@' are reserved for the gateway";
    if (name.startsWith('#')) return "names starting with '#' are taken for rooms";
    return '';
  }

  // A stable colour per name, to tell senders apart.
  function hue(name) {
    let h = 0;
    for (let i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
    return h % 360;
  }

  function nameNode(name, opts) {
    const b = document.createElement('bdi');
    b.className = 'who pick';
    b.textContent = name;
    b.dataset.pick = '@' + name + ' ';
    b.title = 'write to ' + name;
    if (!(opts && opts.plain)) b.style.color = 'hsl(' + hue(name) + ', 55%, 36%)';
    return b;
  }

  function roomNode(room) {
    const b = document.createElement('bdi');
    b.className = 'room pick';
    b.textContent = room;
    b.dataset.pick = room + ' ';
    b.title = 'write in ' + room;
    return b;
  }

  function span(cls, text) {
    const s = document.createElement('span');
    s.className = cls;
    s.textContent = text;
    return s;
  }

  // ---------------------------------------------------------------- the log

  // Appends one line. `parts` are strings or nodes; `attrs` are data-*
  // attributes (from, room).
  function log(kind, parts, attrs) {
    const li = document.createElement('li');
    li.dataset.kind = kind;
    if (attrs) {
      for (const key of Object.keys(attrs)) li.dataset[key] = attrs[key];
    }
    const now = new Date();
    const time = document.createElement('time');
    time.dateTime = now.toISOString();
    time.textContent = clock(now);
    li.append(time, ' ');
    const body = document.createElement('span');
    body.className = 'body';
    for (const part of Array.isArray(parts) ? parts : [parts]) {
      body.append(part); // strings become text nodes
    }
    li.append(body);

    const box = el.log;
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    box.append(li);
    while (box.childElementCount > MAX_LOG_LINES) box.firstElementChild.remove();
    if (atBottom) box.scrollTop = box.scrollHeight;
    return li;
  }

  function info(text) {
    return log('info', text);
  }

  // ---------------------------------------------------------------- status

  function setStatus(state, text, hint) {
    el.status.dataset.state = state;
    el.status.textContent = text;
    el.hint.textContent = hint || '';
    el.hint.title = hint || '';
    updateControls();
  }

  function updateControls() {
    const open = ws !== null && opened;
    const busy = ws !== null; // connecting or open
    const waiting = reconnectTimer !== null;
    el.connect.disabled = busy;
    el.disconnect.disabled = !(busy || waiting);
    el.name.disabled = busy || waiting;
    el.token.disabled = busy || waiting;
    for (const e of [el.input, el.send, el.refresh, el.joinRoom, el.join]) e.disabled = !open;
    el.who.dataset.empty = open ? 'nobody' : 'not connected';
  }

  // ---------------------------------------------------------------- who / rooms

  function renderWho() {
    const names = Array.from(who).sort();
    const items = names.map((name) => {
      const li = document.createElement('li');
      li.dataset.name = name;
      li.title = 'click to write to ' + name;
      const b = document.createElement('bdi');
      b.textContent = name;
      li.append(b);
      if (name === me && opened) {
        li.classList.add('me');
        li.append(span('you', ' (you)'));
      }
      return li;
    });
    el.who.replaceChildren(...items);
    el.whoCount.textContent = ws !== null && opened ? '(' + names.length + ')' : '';
  }

  function renderRooms() {
    const items = rooms.map((room) => {
      const li = document.createElement('li');
      li.dataset.room = room;
      li.title = 'click to write in ' + room;
      const b = document.createElement('bdi');
      b.textContent = room;
      const leave = document.createElement('button');
      leave.type = 'button';
      leave.className = 'leave';
      leave.dataset.leave = room;
      leave.title = 'leave ' + room;
      leave.setAttribute('aria-label', 'leave ' + room);
      li.append(b, leave);
      return li;
    });
    el.rooms.replaceChildren(...items);
  }

  function addRoom(room) {
    if (!rooms.includes(room)) {
      rooms.push(room);
      renderRooms();
    }
  }

  function removeRoom(room) {
    const i = rooms.indexOf(room);
    if (i >= 0) {
      rooms.splice(i, 1);
      renderRooms();
    }
  }

  function pick(text) {
    if (el.input.disabled) return;
    el.input.value = text;
    el.input.focus();
    el.input.setSelectionRange(text.length, text.length);
  }

  // ---------------------------------------------------------------- sending

  function isOpen() {
    return ws !== null && opened && ws.readyState === WebSocket.OPEN;
  }

  function sendText(text) {
    if (!isOpen()) {
      info('not connected: nothing was sent');
      return false;
    }
    try {
      ws.send(text);
      return true;
    } catch (e) {
      log('error', 'send failed: ' + e.message);
      return false;
    }
  }

  // Sends a JSON request with a fresh id, remembered with `note` so that an
  // error notice's ref can be tied back to it.
  function sendRequest(object, note) {
    const id = 'page:' + ++seq;
    object.id = id;
    if (!sendText(JSON.stringify(object))) return false;
    pending.set(id, note);
    while (pending.size > MAX_PENDING) pending.delete(pending.keys().next().value);
    return true;
  }

  function requestList() {
    if (isOpen()) sendText(JSON.stringify({ type: 'list', id: LIST_ID }));
  }

  function join(room, input, quiet) {
    if (!sendRequest({ type: 'join', room }, { input, join: room })) return false;
    // No reply on success: the room is added now, and removed again if an
    // error notice with this request's ref comes back.
    addRoom(room);
    if (!quiet) log('sent', input);
    return true;
  }

  function leave(room, input) {
    if (!sendRequest({ type: 'leave', room }, { input })) return false;
    removeRoom(room);
    log('sent', input);
    return true;
  }

  // Handles one input line; returns true when the line was used (and the
  // input box can be cleared).
  function handleLine(line) {
    if (line.trim() === '') return true;
    if (line.startsWith('//')) {
      const text = line.slice(1);
      if (!sendText(text)) return false;
      log('sent', [span('label', 'you → operator: '), span('text', text)]);
      return true;
    }
    if (line.startsWith('/')) return command(line.slice(1), line);
    if (line.startsWith('@')) {
      const [dst, text] = splitWord(line.slice(1));
      if (dst === '' || text === '') {
        info('usage: @name text');
        return false;
      }
      if (!sendRequest({ dst, msg: text }, { input: line })) return false;
      log('sent', [span('label', 'you → '), nameNode(dst), ': ', span('text', text)], { to: dst });
      return true;
    }
    if (line.startsWith('#')) {
      const [room, text] = splitWord(line);
      const problem = roomProblem(room);
      if (problem) {
        info(problem);
        return false;
      }
      if (text === '') {
        info('usage: #room text');
        return false;
      }
      if (!sendRequest({ dst: room, msg: text }, { input: line })) return false;
      log('sent', ['[', roomNode(room), '] ', span('label', 'you: '), span('text', text)], { to: room });
      return true;
    }
    if (!sendText(line)) return false;
    log('sent', [span('label', 'you → operator: '), span('text', line)]);
    return true;
  }

  function command(cmd, line) {
    const [verb, rest] = splitWord(cmd);
    const args = rest.split(/\s+/).filter((a) => a !== '');
    switch (verb) {
      case 'help':
        log('info', HELP).classList.add('pre');
        return true;
      case 'raw':
        if (rest === '') {
          info('usage: /raw TEXT');
          return false;
        }
        if (!sendText(rest)) return false;
        log('sent', [span('label', 'raw: '), span('text', rest)]);
        return true;
      case 'join':
      case 'leave': {
        if (args.length !== 1) {
          info('usage: /' + verb + ' #room');
          return false;
        }
        const room = roomArg(args[0]);
        const problem = roomProblem(room);
        if (problem) {
          info(problem);
          return false;
        }
        return verb === 'join' ? join(room, '/join ' + room) : leave(room, '/leave ' + room);
      }
      case 'list': {
        if (args.length > 1) {
          info('usage: /list [#room]');
          return false;
        }
        const request = { type: 'list' };
        if (args.length === 1) {
          request.room = roomArg(args[0]);
          const problem = roomProblem(request.room);
          if (problem) {
            info(problem);
            return false;
          }
        }
        if (!sendRequest(request, { input: line, list: true })) return false;
        log('sent', line);
        return true;
      }
      case 'quit':
      case 'exit':
        disconnect();
        return true;
      default:
        info('unknown command /' + verb + ' (/help lists the commands; //text sends text starting with /)');
        return false;
    }
  }

  // ---------------------------------------------------------------- receiving

  function onMessage(data) {
    if (typeof data !== 'string') {
      const size = data instanceof ArrayBuffer ? data.byteLength : (data && data.size) || 0;
      info('binary message (' + size + ' bytes)');
      return;
    }
    let object = null;
    if (/^\s*\{/.test(data)) {
      try {
        object = JSON.parse(data);
      } catch (_) {
        object = null;
      }
    }
    if (object !== null && typeof object === 'object' && !Array.isArray(object)) {
      if (object.src === GATEWAY) {
        notice(object);
        return;
      }
      if (typeof object.src === 'string' && typeof object.dst === 'string') {
        message(object, data);
        return;
      }
    }
    log('server', [span('label', 'operator: '), span('text', data)]);
  }

  function message(m, raw) {
    const src = m.src;
    const dst = m.dst;
    const text = 'msg' in m ? textOf(m.msg) : raw;
    if (dst.startsWith('#')) {
      log('room', ['[', roomNode(dst), '] ', nameNode(src), ': ', span('text', text)], {
        from: src,
        room: dst,
      });
    } else {
      log('private', [nameNode(src), span('label', ' → you: '), span('text', text)], { from: src });
    }
  }

  function notice(n) {
    const msg = textOf(n.msg);
    switch (n.type) {
      case 'error':
        return errorNotice(n, msg);
      case 'list':
        return listNotice(n);
      case 'presence':
        return presenceNotice(n, msg);
      default:
        log('notice', [span('label', 'gateway: '), span('text', msg)]);
    }
  }

  function errorNotice(n, msg) {
    const parts = [span('label', 'error: '), span('text', msg)];
    const ref = n.ref;
    if (ref === LIST_ID) {
      parts.push(span('ctx', ' (automatic list request)'));
    } else if (typeof ref === 'string' && pending.has(ref)) {
      const note = pending.get(ref);
      pending.delete(ref);
      if (note.join) removeRoom(note.join);
      parts.push(span('ctx', ' — for: '), span('orig', note.input));
    } else if (ref !== undefined) {
      parts.push(span('ctx', ' (ref ' + textOf(ref) + ')'));
    }
    // The gateway says we are not in a room: believe it.
    const notMember = /^not a member of (#.*)$/.exec(msg);
    if (notMember) removeRoom(notMember[1]);
    log('error', parts);
  }

  function listNotice(n) {
    const names = namesOf(n.names);
    const room = typeof n.room === 'string' ? n.room : null;
    const ref = n.ref;
    if (typeof ref === 'string') pending.delete(ref);
    if (room === null) {
      // Every list without a room is the whole truth: replace.
      who = new Set(names);
      renderWho();
    } else if (me !== '') {
      // A room's members tell whether we are in it.
      if (names.includes(me)) addRoom(room);
      else removeRoom(room);
    }
    // Our own periodic request, and a presence resync, stay out of the log.
    if (ref === LIST_ID || (ref === undefined && room === null)) return;
    const head = room !== null ? names.length + ' in ' + room : names.length + ' connected';
    log('notice', names.length ? head + ': ' + names.join(', ') : head);
  }

  function presenceNotice(n, msg) {
    const name = typeof n.name === 'string' ? n.name : null;
    if (n.event === 'join' && name !== null) {
      who.add(name);
      renderWho();
      log('presence', [nameNode(name), ' connected']);
    } else if (n.event === 'leave' && name !== null) {
      who.delete(name);
      renderWho();
      log('presence', [nameNode(name), ' disconnected']);
    } else if (n.event === 'digest') {
      const joined = namesOf(n.joined);
      const left = namesOf(n.left);
      for (const x of left) who.delete(x);
      for (const x of joined) who.add(x);
      renderWho();
      const parts = [];
      if (joined.length) parts.push('connected: ' + nameList(joined, 20));
      if (left.length) parts.push('disconnected: ' + nameList(left, 20));
      log('presence', parts.length ? parts.join('; ') : msg);
    } else {
      log('presence', msg);
    }
  }

  // ---------------------------------------------------------------- connection

  function socketBase() {
    let path = location.pathname;
    if (path.endsWith('index.html')) path = path.slice(0, -'index.html'.length);
    return (location.protocol === 'https:' ? 'wss:' : 'ws:') + '//' + location.host + path;
  }

  function connect(isRetry) {
    cancelReconnect();
    if (ws !== null) return;
    if (!isRetry) {
      const name = el.name.value.trim();
      el.name.value = name;
      const problem = nameProblem(name);
      if (problem) {
        info(problem);
        el.name.focus();
        updateControls();
        return;
      }
      me = name;
      token = el.token.value.trim();
      try {
        localStorage.setItem(NAME_KEY, name);
      } catch (_) {
        // storage may be off: the name is just not remembered
      }
      attempt = 0;
    }
    const base = socketBase();
    let url = base + '?name=' + encodeURIComponent(me);
    if (token !== '') url += '&token=' + encodeURIComponent(token);
    let sock;
    try {
      sock = new WebSocket(url);
    } catch (e) {
      log('error', 'cannot open a WebSocket to ' + base + ': ' + e.message);
      setStatus('closed', 'closed: cannot connect', e.message);
      return;
    }
    sock.binaryType = 'arraybuffer';
    ws = sock;
    opened = false;
    retrying = !!isRetry;
    sock.addEventListener('open', () => {
      if (ws === sock) onOpen();
    });
    sock.addEventListener('message', (ev) => {
      if (ws === sock) onMessage(ev.data);
    });
    sock.addEventListener('close', (ev) => {
      if (ws === sock) onClose(ev.code, ev.reason);
    });
    // An 'error' event is always followed by 'close', which says it all.
    info((isRetry ? 'reconnecting to ' : 'connecting to ') + base + ' as ' + me + (token ? ' (with a token)' : '') + ' …');
    setStatus('connecting', 'connecting as ' + me + ' …');
  }

  function onOpen() {
    opened = true;
    setStatus('open', 'connected as ' + me);
    log('info', ['connected as ', nameNode(me, { plain: true })]);
    stableTimer = setTimeout(() => {
      stableTimer = null;
      attempt = 0;
    }, STABLE_MS);
    listTimer = setInterval(requestList, LIST_EVERY_MS);
    requestList();
    if (rooms.length) {
      info('joining again: ' + rooms.join(', '));
      for (const room of rooms.slice()) join(room, '/join ' + room + ' (after reconnecting)', true);
    }
    renderWho();
    el.input.focus();
  }

  function stopSessionTimers() {
    if (listTimer !== null) clearInterval(listTimer);
    if (stableTimer !== null) clearTimeout(stableTimer);
    listTimer = null;
    stableTimer = null;
  }

  function endSession() {
    ws = null;
    stopSessionTimers();
    pending.clear();
    who = new Set();
    renderWho();
  }

  function closeHead(code, reason) {
    return 'closed: ' + code + (reason ? ' ' + reason : '');
  }

  function meaning(code, reason, wasOpen) {
    let why = CLOSE_MEANING[code] || '';
    if (code === 1000 && /idle/i.test(reason)) why = 'nothing heard from this page for too long';
    if (code === 1008 && /token/i.test(reason)) why = 'connect again with a fresh token';
    if (code === 1008 && /rate/i.test(reason)) why = 'too many messages too fast';
    if (code === 1013 && /slow/i.test(reason)) why = 'this page did not read fast enough';
    if (code === 1006) {
      why = wasOpen
        ? 'connection lost (network, proxy or gateway gone)'
        : 'could not connect: refused or unreachable (name taken? origin not allowed? bad or missing token? see the gateway log)';
    }
    // Say nothing twice: the reason may already say it.
    if (reason && why.toLowerCase() === reason.toLowerCase()) why = '';
    return why;
  }

  function onClose(code, reason) {
    const wasOpen = opened;
    const wasRetry = retrying;
    endSession();
    const head = closeHead(code, reason);
    const why = meaning(code, reason, wasOpen);
    log('close', [span('label', head), why ? span('ctx', ' — ' + why) : ''], { code: String(code) });
    lastClose = head;
    lastCloseHint = why;
    if (NO_RECONNECT.has(code)) {
      setStatus('closed', head, (why ? why + ' · ' : '') + 'click Connect to connect again');
    } else if (!wasOpen && !wasRetry) {
      // The first try failed: most likely the name or the token. Trying
      // again by itself would only repeat it.
      setStatus('closed', head, why);
    } else {
      scheduleReconnect();
    }
  }

  function scheduleReconnect() {
    const base = Math.min(BACKOFF_MAX_MS, 1000 * Math.pow(2, Math.min(attempt, 10)));
    attempt += 1;
    // Jitter downwards (up to a quarter), so that clients cut off together
    // do not all come back at once, and the wait is never above 30 s.
    const delay = Math.round(base * (1 - Math.random() * 0.25));
    reconnectAt = Date.now() + delay;
    reconnectTimer = setTimeout(() => {
      reconnectTimer = null;
      stopCountdown();
      connect(true);
    }, delay);
    info('reconnecting in ' + Math.ceil(delay / 1000) + ' s');
    showCountdown();
    countdownTimer = setInterval(showCountdown, 250);
  }

  function showCountdown() {
    const left = Math.max(0, Math.ceil((reconnectAt - Date.now()) / 1000));
    setStatus('reconnecting', lastClose + ' — reconnecting in ' + left + ' s', lastCloseHint);
  }

  function stopCountdown() {
    if (countdownTimer !== null) clearInterval(countdownTimer);
    countdownTimer = null;
  }

  function cancelReconnect() {
    if (reconnectTimer !== null) clearTimeout(reconnectTimer);
    reconnectTimer = null;
    stopCountdown();
  }

  function disconnect() {
    const waiting = reconnectTimer !== null;
    cancelReconnect();
    rooms.length = 0;
    renderRooms();
    if (ws !== null) {
      const sock = ws;
      endSession(); // later events of this socket are ignored
      try {
        sock.close(1000);
      } catch (_) {
        // already closing
      }
      const head = closeHead(1000, '');
      log('close', [span('label', head), span('ctx', ' — you disconnected')], { code: '1000' });
      setStatus('closed', head, 'you disconnected');
    } else if (waiting) {
      info('reconnecting cancelled');
      setStatus('closed', lastClose || 'closed', 'reconnecting cancelled');
    }
    attempt = 0;
  }

  // ---------------------------------------------------------------- events

  el.login.addEventListener('submit', (ev) => {
    ev.preventDefault();
    connect(false);
  });

  el.disconnect.addEventListener('click', () => disconnect());

  el.composer.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const line = el.input.value;
    if (line === '') return;
    if (history[history.length - 1] !== line) {
      history.push(line);
      if (history.length > MAX_HISTORY) history.shift();
    }
    historyPos = history.length;
    if (handleLine(line)) el.input.value = '';
    el.input.focus();
  });

  el.input.addEventListener('keydown', (ev) => {
    if (ev.key === 'ArrowUp' && historyPos > 0) {
      historyPos -= 1;
      el.input.value = history[historyPos];
      ev.preventDefault();
    } else if (ev.key === 'ArrowDown' && historyPos < history.length) {
      historyPos += 1;
      el.input.value = historyPos < history.length ? history[historyPos] : '';
      ev.preventDefault();
    }
  });

  el.refresh.addEventListener('click', () => requestList());

  el.joinForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const arg = el.joinRoom.value.trim();
    if (arg === '') return;
    const room = roomArg(arg);
    const problem = roomProblem(room);
    if (problem) {
      info(problem);
      return;
    }
    if (join(room, '/join ' + room)) el.joinRoom.value = '';
  });

  el.who.addEventListener('click', (ev) => {
    const li = ev.target.closest('li[data-name]');
    if (li) pick('@' + li.dataset.name + ' ');
  });

  el.rooms.addEventListener('click', (ev) => {
    const button = ev.target.closest('button[data-leave]');
    if (button) {
      const room = button.dataset.leave;
      if (isOpen()) leave(room, '/leave ' + room);
      else removeRoom(room);
      return;
    }
    const li = ev.target.closest('li[data-room]');
    if (li) pick(li.dataset.room + ' ');
  });

  el.log.addEventListener('click', (ev) => {
    const target = ev.target.closest('[data-pick]');
    if (target && !String(window.getSelection() || '')) pick(target.dataset.pick);
  });

  window.addEventListener('online', () => {
    if (reconnectTimer !== null) connect(true);
  });

  // ---------------------------------------------------------------- start

  (function start() {
    let name = '';
    try {
      name = new URLSearchParams(location.search).get('name') || '';
    } catch (_) {
      name = '';
    }
    if (name === '') {
      try {
        name = localStorage.getItem(NAME_KEY) || '';
      } catch (_) {
        name = '';
      }
    }
    el.name.value = name;
    renderWho();
    renderRooms();
    setStatus('idle', 'not connected');
    info('Choose a name and click Connect. Then type /help for the commands.');
    (name ? el.connect : el.name).focus();
  })();
})();
