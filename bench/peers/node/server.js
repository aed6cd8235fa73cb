// Node.js + ws peer for bench/compare: the core of docs/PROTOCOL.md.
//   node server.js PORT [--host ADDR] [--cert FILE --key FILE] [-v]
// Name: ?name= if present, else the raw Origin header (UTF-8 if valid, else
// Latin-1). A JSON text frame with a string dst is forwarded, with src set to
// the sender's name, to every client of that name (dst "#room": to every
// member but the sender); {"type":"join"|"leave","room":"#r"}; {"type":"list"};
// unknown recipient -> an error notice; anything else goes to the server
// (counted, dropped). --cert/--key: wss through an https server.
'use strict';
const fs = require('fs');
const http = require('http');
const https = require('https');
const { WebSocketServer } = require('ws');

const usage = 'usage: node server.js PORT [--host ADDR] [--cert FILE --key FILE] [-v]';
let port = 0, host = '127.0.0.1', cert = null, key = null, verbose = false;
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === '--host') host = argv[++i];
  else if (a === '--cert') cert = argv[++i];
  else if (a === '--key') key = argv[++i];
  else if (a === '-v') verbose = true;
  else if (!port && /^\d+$/.test(a)) port = Number(a);
  else { console.error(usage); process.exit(2); }
}
if (!port || (cert === null) !== (key === null)) { console.error(usage); process.exit(2); }

const byName = new Map(); // name -> Set of sockets
const rooms = new Map();  // room -> Set of sockets
let toServer = 0;

const utf8 = new TextDecoder('utf-8', { fatal: true });
function nameOf(req) {
  const q = req.url.indexOf('?');
  if (q >= 0) {
    const params = new URLSearchParams(req.url.slice(q + 1));
    if (params.has('name')) return params.get('name');
  }
  // Node hands header bytes over as Latin-1: re-read them as UTF-8 when valid.
  const raw = req.headers.origin || '';
  try { return utf8.decode(Buffer.from(raw, 'latin1')); } catch { return raw; }
}

function notice(ws, type, msg, ref, extra) {
  const n = { src: '@gateway', dst: ws.name, type, msg };
  if (ref !== undefined) n.ref = ref;
  if (extra) Object.assign(n, extra);
  ws.send(JSON.stringify(n));
}

function onText(ws, text) {
  if (text.trimStart()[0] !== '{') { toServer++; return; }
  let obj;
  try { obj = JSON.parse(text); } catch { toServer++; return; }
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) { toServer++; return; }
  const id = obj.id;
  const type = obj.type;
  if (type === 'join' || type === 'leave') {
    const room = obj.room;
    if (typeof room !== 'string' || room.length < 2 || room[0] !== '#') {
      notice(ws, 'error', 'invalid room: "room" must be a string such as "#lobby"', id);
    } else if (type === 'join') {
      let members = rooms.get(room);
      if (!members) rooms.set(room, (members = new Set()));
      members.add(ws);
      ws.rooms.add(room);
    } else {
      leave(ws, room);
    }
    return;
  }
  if (type === 'list') {
    const names = [];
    for (const [name, set] of byName) for (let i = 0; i < set.size; i++) names.push(name);
    notice(ws, 'list', `${names.length} connected`, id, { names });
    return;
  }
  const dst = obj.dst;
  if (typeof dst !== 'string' || dst === '' || dst[0] === '@') { toServer++; return; }
  obj.src = ws.name;
  const out = JSON.stringify(obj);
  if (dst[0] === '#') {
    const members = rooms.get(dst);
    if (!members || !members.has(ws)) { notice(ws, 'error', `not a member of ${dst}`, id); return; }
    for (const m of members) if (m !== ws) m.send(out);
    return;
  }
  const targets = byName.get(dst);
  if (!targets) { notice(ws, 'error', `recipient not connected: ${dst}`, id); return; }
  for (const t of targets) t.send(out);
}

function leave(ws, room) {
  const members = rooms.get(room);
  if (members) {
    members.delete(ws);
    if (members.size === 0) rooms.delete(room);
  }
  ws.rooms.delete(room);
}

const server = cert
  ? https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) })
  : http.createServer();
const wss = new WebSocketServer({ server });

wss.on('connection', (ws, req) => {
  ws.name = nameOf(req);
  ws.rooms = new Set();
  let set = byName.get(ws.name);
  if (!set) byName.set(ws.name, (set = new Set()));
  set.add(ws);
  if (verbose) console.error(`${ws.name} connected`);
  ws.on('message', (data, isBinary) => {
    if (isBinary) { toServer++; return; }
    onText(ws, data.toString());
  });
  ws.on('error', (e) => { if (verbose) console.error(`${ws.name} error ${e.message}`); });
  ws.on('close', () => {
    if (verbose) console.error(`${ws.name} disconnected`);
    const s = byName.get(ws.name);
    if (s) { s.delete(ws); if (s.size === 0) byName.delete(ws.name); }
    for (const room of [...ws.rooms]) leave(ws, room);
  });
});

server.on('tlsClientError', (e) => { if (verbose) console.error(`tls: ${e.message}`); });
server.listen(port, host, () => {
  console.error(`node-ws listening on ${host}:${port} (${cert ? 'wss' : 'ws'})`);
});
const stop = () => { wss.close(); server.close(); process.exit(0); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
