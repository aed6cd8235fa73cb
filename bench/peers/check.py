#!/usr/bin/env python3
"""Protocol check for a bench peer (or wssgate itself): the core of docs/PROTOCOL.md.

    bench/.venv/bin/python bench/peers/check.py ws://127.0.0.1:PORT/ [--ca FILE]

Two clients, alice (name in Origin) and bob (name in ?name=), then carol:
a private message (spoofed src overwritten, other fields and non-ASCII text
untouched), a message to the server (no reply), list, rooms (join, a room
message reaches the other members but not the sender, leave, not a member),
and an unknown recipient (error notice with ref). No reply is awaited with a
timeout to prove an absence: a `list` on the same connection comes after
everything the server did before it, so "the next frame is the list reply"
shows that nothing else arrived. Exit 0 when every check passes.
"""

import argparse
import asyncio
import json
import ssl
import sys

from websockets.asyncio.client import connect

TIMEOUT = 5.0
results = {"passed": 0, "failed": 0}


def check(what, cond, detail=""):
    if cond:
        results["passed"] += 1
        print(f"ok   {what}")
    else:
        results["failed"] += 1
        print(f"FAIL {what} {detail}")


async def recv_json(ws):
    text = await asyncio.wait_for(ws.recv(), TIMEOUT)
    try:
        return json.loads(text)
    except ValueError:
        return {"_text": text}


async def sync(ws, me):
    """Sends list; returns the reply, which must be the next frame."""
    await ws.send(json.dumps({"type": "list"}))
    reply = await recv_json(ws)
    ok = reply.get("type") == "list" and reply.get("src") == "@gateway" and reply.get("dst") == me
    return reply if ok else {"_unexpected": reply}


def with_name(url, name):
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}name={name}"


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--ca")
    a = p.parse_args()
    ctx = None
    if a.url.startswith("wss:"):
        ctx = ssl.create_default_context(cafile=a.ca)
    kw = {"ssl": ctx} if ctx else {}
    kw["compression"] = None

    async with (
        connect(a.url, origin="alice", **kw) as alice,
        connect(with_name(a.url, "bob"), **kw) as bob,
    ):
        # list: both names, addressed to the asker.
        reply = await sync(alice, "alice")
        names = reply.get("names", [])
        check("list answers with src @gateway, dst = asker, names", "alice" in names and "bob" in names, reply)

        # private message: src set to the real sender, other fields untouched.
        await alice.send(json.dumps({"src": "mallory", "dst": "bob", "msg": "héllo 我", "n": 1}, ensure_ascii=False))
        got = await recv_json(bob)
        check("private message reaches dst", got.get("dst") == "bob" and got.get("msg") == "héllo 我", got)
        check("private message: src is the sender's real name (Origin)", got.get("src") == "alice", got)
        check("private message: other fields pass through", got.get("n") == 1, got)
        await bob.send(json.dumps({"dst": "alice", "msg": "back"}))
        got = await recv_json(alice)
        check("private message the other way: src from ?name=", got.get("src") == "bob" and got.get("msg") == "back", got)

        # message to the server: plain text and JSON without dst get no reply.
        await alice.send("hello server")
        await alice.send(json.dumps({"msg": "no dst"}))
        reply = await sync(alice, "alice")
        check("messages to the server get no reply", "_unexpected" not in reply, reply)

        # unknown recipient.
        await alice.send(json.dumps({"dst": "nobody", "msg": "x", "id": 7}))
        got = await recv_json(alice)
        check(
            "unknown recipient: error notice",
            got.get("src") == "@gateway"
            and got.get("dst") == "alice"
            and got.get("type") == "error"
            and got.get("msg") == "recipient not connected: nobody",
            got,
        )
        check("unknown recipient: ref = the request's id", got.get("ref") == 7, got)

        # rooms
        async with connect(a.url, origin="carol", **kw) as carol:
            for ws, me in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
                await ws.send(json.dumps({"type": "join", "room": "#r"}))
                check(f"join #r ({me}): no reply", "_unexpected" not in await sync(ws, me))
            await alice.send(json.dumps({"dst": "#r", "msg": "to the room"}))
            for ws, me in ((bob, "bob"), (carol, "carol")):
                got = await recv_json(ws)
                check(
                    f"room message reaches {me} with src alice",
                    got.get("dst") == "#r" and got.get("src") == "alice" and got.get("msg") == "to the room",
                    got,
                )
            check("room message does not come back to its sender", "_unexpected" not in await sync(alice, "alice"))

            await bob.send(json.dumps({"type": "leave", "room": "#r"}))
            check("leave #r: no reply", "_unexpected" not in await sync(bob, "bob"))
            await alice.send(json.dumps({"dst": "#r", "msg": "after leave"}))
            await alice.send(json.dumps({"dst": "bob", "msg": "marker"}))
            got = await recv_json(carol)
            check("room message after leave reaches carol", got.get("msg") == "after leave", got)
            got = await recv_json(bob)
            check("room message after leave skips bob", got.get("msg") == "marker", got)

            await bob.send(json.dumps({"dst": "#r", "msg": "x", "id": "q"}))
            got = await recv_json(bob)
            check(
                "room message from a non-member: error notice",
                got.get("type") == "error" and got.get("src") == "@gateway" and "#r" in got.get("msg", ""),
                got,
            )

        # carol is gone: list shows two again.
        await asyncio.sleep(0.2)
        reply = await sync(alice, "alice")
        check("a closed client leaves the list", sorted(reply.get("names", [])) == ["alice", "bob"], reply)

    print(f"{results['passed']} passed, {results['failed']} failed")
    return 0 if results["failed"] == 0 else 1


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except Exception as e:  # connection refused, timeout: one failure, not a traceback
        print(f"FAIL {type(e).__name__}: {e}")
        print(f"{results['passed']} passed, {results['failed'] + 1} failed")
        sys.exit(1)
