"""Python + websockets peer for bench/compare: the core of docs/PROTOCOL.md.

    python server.py PORT [--host ADDR] [--cert FILE --key FILE] [-v]

Name: ?name= if present, else the raw Origin header (UTF-8 if valid, else
Latin-1). A JSON text frame with a string dst is forwarded, with src set to
the sender's name, to every client of that name (dst "#room": to every member
but the sender); {"type":"join"|"leave","room":"#r"}; {"type":"list"}; unknown
recipient -> an error notice; anything else goes to the server (counted,
dropped). --cert/--key: wss. websockets' asyncio server with its defaults, but
for compression (off: no other server here negotiates permessage-deflate).
"""

import argparse
import asyncio
import json
import logging
import signal
import ssl
import sys
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import broadcast, serve
from websockets.exceptions import ConnectionClosed

by_name: dict[str, set] = {}  # name -> connections
rooms: dict[str, set] = {}  # room -> connections
to_server = 0


def name_of(ws) -> str:
    query = parse_qs(urlsplit(ws.request.path).query, keep_blank_values=True)
    if "name" in query:
        return query["name"][0]
    raw = ws.request.headers.get("Origin", "")
    data = raw.encode("latin-1", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


async def notice(ws, name, kind, msg, ref=None, **extra):
    n = {"src": "@gateway", "dst": name, "type": kind, "msg": msg}
    if ref is not None:
        n["ref"] = ref
    n.update(extra)
    await ws.send(json.dumps(n, ensure_ascii=False, separators=(",", ":")))


def leave(ws, my_rooms, room):
    members = rooms.get(room)
    if members is not None:
        members.discard(ws)
        if not members:
            del rooms[room]
    my_rooms.discard(room)


async def on_text(ws, name, my_rooms, text):
    global to_server
    if not text.lstrip().startswith("{"):
        to_server += 1
        return
    try:
        obj = json.loads(text)
    except ValueError:
        to_server += 1
        return
    if not isinstance(obj, dict):
        to_server += 1
        return
    ref = obj.get("id")
    kind = obj.get("type")
    if kind in ("join", "leave"):
        room = obj.get("room")
        if not isinstance(room, str) or len(room) < 2 or not room.startswith("#"):
            await notice(ws, name, "error", 'invalid room: "room" must be a string such as "#lobby"', ref)
        elif kind == "join":
            rooms.setdefault(room, set()).add(ws)
            my_rooms.add(room)
        else:
            leave(ws, my_rooms, room)
        return
    if kind == "list":
        names = [n for n, conns in by_name.items() for _ in conns]
        await notice(ws, name, "list", f"{len(names)} connected", ref, names=names)
        return
    dst = obj.get("dst")
    if not isinstance(dst, str) or not dst or dst.startswith("@"):
        to_server += 1
        return
    obj["src"] = name
    out = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    if dst.startswith("#"):
        members = rooms.get(dst)
        if members is None or ws not in members:
            await notice(ws, name, "error", f"not a member of {dst}", ref)
            return
        broadcast([m for m in members if m is not ws], out)
        return
    targets = by_name.get(dst)
    if not targets:
        await notice(ws, name, "error", f"recipient not connected: {dst}", ref)
        return
    for target in list(targets):
        try:
            await target.send(out)
        except ConnectionClosed:
            pass  # the receiver left meanwhile: its own handler cleans up


async def handler(ws):
    global to_server
    name = name_of(ws)
    my_rooms: set[str] = set()
    by_name.setdefault(name, set()).add(ws)
    logging.info("%s connected", name)
    try:
        async for message in ws:
            if isinstance(message, str):
                await on_text(ws, name, my_rooms, message)
            else:
                to_server += 1
    except ConnectionClosed:
        pass
    finally:
        logging.info("%s disconnected", name)
        conns = by_name.get(name)
        if conns is not None:
            conns.discard(ws)
            if not conns:
                del by_name[name]
        for room in list(my_rooms):
            leave(ws, my_rooms, room)


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("port", type=int)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("-v", action="store_true")
    a = p.parse_args()
    if (a.cert is None) != (a.key is None):
        p.error("--cert and --key go together")
    logging.basicConfig(level=logging.INFO if a.v else logging.ERROR, format="%(message)s")
    ctx = None
    if a.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert, a.key)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(handler, a.host, a.port, ssl=ctx, compression=None):
        mode = "wss" if ctx else "ws"
        print(f"python-websockets listening on {a.host}:{a.port} ({mode})", file=sys.stderr, flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(main())
