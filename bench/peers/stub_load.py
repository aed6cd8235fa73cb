#!/usr/bin/env python3
"""A stand-in for wssgate-bench with its command line, to test bench/compare's
plumbing before the real load generator exists. It is NOT lean: one Python
process saturates its core long before any server here does, so its rates say
nothing about the servers; only the server CPU per message stays meaningful.

    bench/.venv/bin/python bench/peers/stub_load.py pairs|fanout|idle|connect \\
        --url URL --duration SECS [--json] [--connections N] [--in-flight K]
        [--payload P] [--pid PID] [--ca FILE]

    LOAD="bench/.venv/bin/python bench/peers/stub_load.py" bench/compare pairs

pairs: N connections in N/2 pairs, K private messages in flight from each to
its partner. fanout: N-1 members of room #bench and one publisher, one message
in flight, time until every member has it. idle: N connections held; server
RSS growth (/proc/PID/status) per connection. connect: handshakes one after
another. Output: one JSON line (--json) like tcpfwd's.
"""

import argparse
import asyncio
import json
import os
import re
import ssl
import sys
import time

from websockets.asyncio.client import connect

T_RE = re.compile(r'"t":(\d+)')


def pcts(samples_ns):
    if not samples_ns:
        return {"p50": 0, "p99": 0, "p999": 0, "max": 0}
    s = sorted(samples_ns)

    def at(p):
        return s[min(len(s) - 1, int(p / 100 * len(s)))] / 1000

    return {"p50": at(50), "p99": at(99), "p999": at(99.9), "max": s[-1] / 1000}


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def open_conns(a, n, prefix):
    run = f"{os.getpid()}"
    conns = []
    for i in range(n):
        conns.append(await connect(a.url, origin=f"{prefix}{run}-{i}", ssl=a.ssl, compression=None,
                                   ping_interval=None, max_queue=None))
    return conns, [f"{prefix}{run}-{i}" for i in range(n)]


async def pairs(a):
    conns, names = await open_conns(a, a.connections, "p")
    pad = "x" * max(0, a.payload - 40)
    lat, count = [], [0]
    t_end = time.monotonic() + a.duration

    def msg(dst):
        return f'{{"dst":"{dst}","t":{time.monotonic_ns()},"p":"{pad}"}}'

    async def reader(i):
        ws, partner = conns[i], conns[i ^ 1]
        async for text in ws:
            now = time.monotonic_ns()
            m = T_RE.search(text)
            if m:
                lat.append(now - int(m.group(1)))
                count[0] += 1
            if time.monotonic() < t_end:
                await partner.send(msg(names[i]))  # the partner sends its next one to i

    t0 = time.monotonic()
    for i, ws in enumerate(conns):
        for _ in range(a.in_flight):
            await ws.send(msg(names[i ^ 1]))
    tasks = [asyncio.create_task(reader(i)) for i in range(len(conns))]
    await asyncio.sleep(max(0.0, t_end - time.monotonic()))
    secs = time.monotonic() - t0
    delivered = count[0]
    for t in tasks:
        t.cancel()
    for ws in conns:
        await ws.close()
    return {"delivered": delivered, "msgs_per_sec": delivered / secs, "duration_s": secs, "latency_us": pcts(lat)}


async def fanout(a):
    conns, names = await open_conns(a, a.connections, "f")
    pub, members = conns[0], conns[1:]
    for ws in members:
        await ws.send('{"type":"join","room":"#bench"}')
        await ws.send('{"type":"list"}')
        await ws.recv()  # the join is done
    await pub.send('{"type":"join","room":"#bench"}')
    pad = "x" * max(0, a.payload - 40)
    t_all, delivered = [], 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < a.duration:
        start = time.monotonic_ns()
        await pub.send(f'{{"dst":"#bench","t":{start},"p":"{pad}"}}')
        await asyncio.gather(*(ws.recv() for ws in members))
        t_all.append(time.monotonic_ns() - start)
        delivered += len(members)
    secs = time.monotonic() - t0
    for ws in conns:
        await ws.close()
    return {"delivered": delivered, "deliveries_per_sec": delivered / secs, "duration_s": secs,
            "time_to_all_us": pcts(t_all)}


async def idle(a):
    before = rss(a.pid) if a.pid else 0
    conns, _ = await open_conns(a, a.connections, "i")
    await asyncio.sleep(min(a.duration, 2.0))
    after = rss(a.pid) if a.pid else 0
    await asyncio.sleep(max(0.0, a.duration - 2.0))
    for ws in conns:
        await ws.close()
    return {"connections": len(conns), "rss_before": before, "rss_after": after,
            "bytes_per_connection": (after - before) / len(conns) if a.pid else None}


async def connects(a):
    lat, n = [], 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < a.duration:
        s = time.monotonic_ns()
        ws = await connect(a.url, origin=f"c{os.getpid()}-{n}", ssl=a.ssl, compression=None)
        lat.append(time.monotonic_ns() - s)
        n += 1
        await ws.close()
    secs = time.monotonic() - t0
    return {"handshakes": n, "handshakes_per_sec": n / secs, "duration_s": secs, "latency_us": pcts(lat)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=["pairs", "fanout", "idle", "connect"])
    p.add_argument("--url", required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--json", action="store_true")
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--in-flight", type=int, default=4)
    p.add_argument("--payload", type=int, default=80)
    p.add_argument("--pid", type=int)
    p.add_argument("--ca")
    a = p.parse_args()
    a.ssl = ssl.create_default_context(cafile=a.ca) if a.url.startswith("wss:") else None
    fn = {"pairs": pairs, "fanout": fanout, "idle": idle, "connect": connects}[a.scenario]
    cpu0 = time.process_time()
    r = asyncio.run(asyncio.wait_for(fn(a), a.duration + 60))
    out = {"scenario": a.scenario, "tool": "stub_load.py", "url": a.url, **r,
           "load_cpu_s": time.process_time() - cpu0}
    print(json.dumps(out) if a.json else out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
