#!/usr/bin/env python3
"""Unit tests of bench/compare's parsing and plans (no server, no load
generator):

    python3 bench/test_compare.py
"""

import importlib.machinery
import importlib.util
import os
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


def load_compare():
    loader = importlib.machinery.SourceFileLoader("compare", os.path.join(HERE, "compare"))
    spec = importlib.util.spec_from_loader("compare", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


compare = load_compare()

# A wssgate-bench pairs --stalled 1 --pid PID --json line, cut down.
STALLED_LINE = (
    '{"scenario":"pairs","url":"ws://127.0.0.1:28080/","tls":false,"threads":1,"warmup_s":1.0,'
    '"window_s":5.0,"connections":100,"in_flight":4,"rate":null,"frame_bytes":80,"framing":"raw",'
    '"messages":1500000,"msgs_per_s":300000.0,"latency":{"p50_us":1200.0,"p95_us":1800.0,'
    '"p99_us":2100.0,"p999_us":3000.0,"max_us":9000.0,"mean_us":1250.0,"count":1500000},'
    '"stalled":{"clients":1,"frame_bytes":60000,"feeder_rate":200.0,"feeder_sent":1200,'
    '"closed_by_server":3,"seen_by_notice":3,"seen_by_socket":0,"reconnects":3,'
    '"reconnect_failures":0,"notices":40,"too_slow":2,"not_connected":38,'
    '"server_rss":{"samples":21,"first":8000000,"max":24000000,"last":12000000,"growth":4000000}},'
    '"errors":0,"first_error":null,"load":{"cpu_s":5.0,"user_s":1.0,"sys_s":4.0,"cpu_share":1.0,'
    '"cpu_us_per_unit":3.3},"server":{"pid":42,"cpu_s":4.5,"user_s":1.5,"sys_s":3.0,'
    '"cpu_share":0.9,"cpu_us_per_unit":3.0},"nofile":{"soft_before":1024,"soft":1024,"hard":1024}}'
)


class Parsing(unittest.TestCase):
    def test_the_stalled_count_is_split_off(self):
        self.assertEqual(compare.split_stalled([]), ([], "1"))
        self.assertEqual(compare.split_stalled(["--stalled", "3", "--stalled-rate", "400"]),
                         (["--stalled-rate", "400"], "3"))
        self.assertEqual(compare.split_stalled(["--stalled=2", "--stalled-size", "30000", "-k", "8"]),
                         (["--stalled-size", "30000", "-k", "8"], "2"))

    def test_a_stalled_run_is_read(self):
        r, used, raw = compare.parse_result("progress\n" + STALLED_LINE + "\n", "pairs")
        # The new figures do not take the place of the pairs' own.
        self.assertEqual(r["rate"], 300000.0)
        self.assertEqual(r["p99"], 2100.0)
        self.assertEqual(r["count"], 1500000.0)
        self.assertEqual(used["rate"], "msgs_per_s")
        self.assertEqual(compare.window_cpu_us(raw), 3.0)
        st = compare.stalled_figures(raw)
        self.assertEqual((st["closed"], st["reconnects"], st["feeder_sent"]), (3, 3, 1200))
        self.assertEqual((st["rss_first"], st["rss_max"], st["rss_last"]), (8000000, 24000000, 12000000))

    def test_without_the_figures(self):
        self.assertIsNone(compare.window_cpu_us({"server": None}))
        self.assertIsNone(compare.window_cpu_us({"server": {"pid": 1}}))
        self.assertIsNone(compare.window_cpu_us(None))
        self.assertEqual(compare.stalled_figures({"scenario": "pairs"}), {})
        self.assertEqual(compare.stalled_figures(None), {})


# A wssgate-bench pairs line over two nodes (two --url, three --pid), cut down.
CLUSTER_LINE = (
    '{"scenario":"pairs","url":"ws://127.0.0.1:28085/","urls":["ws://127.0.0.1:28085/","ws://127.0.0.1:28086/"],'
    '"tls":false,"threads":1,"warmup_s":1.0,"window_s":10.0,"connections":100,"in_flight":null,"rate":20000.0,'
    '"burst":1,"frame_bytes":80,"framing":"raw","messages":200000,"msgs_per_s":20000.0,'
    '"latency":{"p50_us":450.0,"p95_us":900.0,"p99_us":1500.0,"p999_us":3000.0,"max_us":9000.0,'
    '"mean_us":500.0,"count":200000},"errors":0,"first_error":null,'
    '"load":{"cpu_s":2.0,"user_s":1.0,"sys_s":1.0,"cpu_share":0.2,"cpu_us_per_unit":10.0},'
    '"server":{"pid":41,"pids":[41,42,43],"cpu_s":6.0,"user_s":3.0,"sys_s":3.0,"cpu_share":0.6,'
    '"cpu_us_per_unit":30.0},"steal_share":0.0,"nofile":{"soft_before":1024,"soft":1024,"hard":1024}}'
)

REDIS_CSV = (
    '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms",'
    '"max_latency_ms"\n'
    '"PUBLISH wsg:bench xxxxxxxx","429184.56","1.666","0.264","0.703","5.119","8.567","15.143"\n'
)


class Cluster(unittest.TestCase):
    def test_node_configs_get_the_redis_url_and_keep_their_ports(self):
        ports = set()
        for node, path in compare.CLUSTER_NODES.items():
            with open(os.path.join(compare.ROOT, path)) as f:
                text = f.read()
            out = compare.node_config(text, "redis://127.0.0.1:40001/0")
            self.assertIn('redis = "redis://127.0.0.1:40001/0"', out)
            self.assertEqual(sum(1 for x in out.splitlines() if x.startswith("redis =")), 1)
            self.assertIn(f'node_id = "{node}"', out)
            ws, admin = compare.node_ports(out)
            ports |= {ws, admin}
        # Two nodes, four ports, none of them another server's.
        self.assertEqual(len(ports), 4)
        taken = {p for pair in compare.PORTS.values() for p in pair if p} | {29090}
        self.assertFalse(ports & taken)

    def test_a_config_without_one_redis_line_is_refused(self):
        with self.assertRaises(ValueError):
            compare.node_config("[cluster]\nnode_id = \"a\"\n", "redis://127.0.0.1:1/0")
        with self.assertRaises(ValueError):
            compare.node_config('redis = "a"\nredis = "b"\n', "redis://127.0.0.1:1/0")
        # A comment after the value goes with it; a commented-out line is not one.
        out = compare.node_config('# redis = "x"\nredis = "y"  # here\n', "redis://127.0.0.1:1/0")
        self.assertEqual(out, '# redis = "x"\nredis = "redis://127.0.0.1:1/0"\n')
        with self.assertRaises(ValueError):
            compare.node_ports('[admin]\nbind = "127.0.0.1:1"\n')

    def test_other_work_on_the_machine(self):
        self.assertGreater(compare.machine_busy(), 0.0)
        self.assertEqual(compare.other_cpu(10.0, 7.5), 2.5)
        self.assertEqual(compare.other_cpu(7.0, 7.5), 0.0)  # tick rounding: never negative
        self.assertIsNone(compare.other_cpu(10.0, None))

    def test_ready_only_with_the_cluster_up(self):
        self.assertTrue(compare.cluster_up((200, "ok\ncluster: up\n")))
        self.assertFalse(compare.cluster_up((200, "ok\ncluster: recovering\n")))
        self.assertFalse(compare.cluster_up((200, "ok\ncluster: down\n")))
        self.assertFalse(compare.cluster_up((503, "shutting down\n")))
        self.assertFalse(compare.cluster_up(None))

    def test_redis_runs_without_persistence_on_loopback(self):
        cmd = compare.redis_cmd(40001, "/tmp/x")
        joined = " ".join(cmd)
        self.assertIn("--port 40001 --bind 127.0.0.1", joined)
        i = cmd.index("--save")
        self.assertEqual(cmd[i + 1], "")
        self.assertEqual(cmd[cmd.index("--appendonly") + 1], "no")

    def test_redis_benchmark_publishes_the_frame_size_with_pipelining(self):
        cmd = compare.redis_bench_cmd(40001, 123456, 80)
        self.assertEqual(cmd[:3], ["taskset", "-c", compare.LOAD_CPU])
        self.assertEqual(cmd[cmd.index("-P") + 1], str(compare.REDIS_BENCH_PIPELINE))
        self.assertEqual(cmd[3], "redis-benchmark")
        self.assertEqual(cmd[cmd.index("-c", 4) + 1], str(compare.REDIS_BENCH_CLIENTS))
        self.assertEqual(cmd[cmd.index("-n") + 1], "123456")
        self.assertEqual(cmd[-3:-1], ["PUBLISH", compare.REDIS_CHANNEL])
        self.assertEqual(len(cmd[-1]), 80)
        low, high = compare.REDIS_BENCH_REQUESTS
        self.assertEqual(compare.bench_requests(None, 10), low)
        self.assertEqual(compare.bench_requests(400000.0, 10), 4000000)
        self.assertEqual(compare.bench_requests(1.0, 10), low)
        self.assertEqual(compare.bench_requests(1e9, 3600), high)

    def test_redis_benchmark_csv_is_read(self):
        r = compare.parse_redis_benchmark(REDIS_CSV)
        self.assertAlmostEqual(r["rate"], 429184.56)
        self.assertAlmostEqual(r["p50"], 703.0)
        self.assertAlmostEqual(r["p99"], 8567.0)
        self.assertIsNone(compare.parse_redis_benchmark(""))
        self.assertIsNone(compare.parse_redis_benchmark('"test","rps"\n"PUBLISH x","n/a"\n'))

    def test_each_run_has_every_pass_and_the_paced_ones_last(self):
        for run in (1, 2, 3):
            plan = compare.cluster_plan(run)
            self.assertEqual(sorted(plan), sorted(k for k, _ in compare.CLUSTER_ROWS))
            self.assertLess(plan.index("cross"), plan.index("cross-paced"))
            self.assertLess(plan.index("cross"), plan.index("single-paced"))
        # Single and cross swap places every second run.
        self.assertEqual(compare.cluster_plan(1)[:2], ["single", "cross"])
        self.assertEqual(compare.cluster_plan(2)[:2], ["cross", "single"])
        self.assertEqual(compare.half_rate(41001.7), 20500)
        self.assertIsNone(compare.half_rate(None))
        self.assertIsNone(compare.half_rate(0.0))

    def test_the_cross_node_load_gets_every_url_and_pid(self):
        urls = ["ws://127.0.0.1:28085/", "ws://127.0.0.1:28086/"]
        cmd = compare.cluster_load_cmd(urls, [41, 42, 43], 10.0, ["--rate", "20500"])
        self.assertEqual(cmd[:3], ["taskset", "-c", compare.LOAD_CPU])
        self.assertEqual(cmd[4], "pairs")
        self.assertEqual([cmd[i + 1] for i, x in enumerate(cmd) if x == "--url"], urls)
        self.assertEqual([cmd[i + 1] for i, x in enumerate(cmd) if x == "--pid"], ["41", "42", "43"])
        self.assertEqual(cmd[cmd.index("--duration") + 1], "10s")
        self.assertIn("--json", cmd)
        self.assertEqual(cmd[-2:], ["--rate", "20500"])
        self.assertEqual(cmd[cmd.index("--connections") + 1], "100")
        self.assertEqual(compare.frame_size([]), 80)
        self.assertEqual(compare.frame_size(["--size", "200"]), 200)
        self.assertEqual(compare.frame_size(["--size=120", "-k", "2"]), 120)

    def test_a_two_node_line_is_read(self):
        r, used, raw = compare.parse_result(CLUSTER_LINE, "pairs")
        self.assertEqual((r["rate"], r["p50"], r["p99"]), (20000.0, 450.0, 1500.0))
        self.assertEqual(used["rate"], "msgs_per_s")
        self.assertEqual(compare.window_cpu_us(raw), 30.0)

    def test_targets_and_table(self):
        def m(**kw):
            return dict({"ok": 1, "runs": 1}, **kw)

        medians = {
            "single": m(rate=200000.0, p50=900.0, p99=2000.0, cpu_per_unit=4e-6, load_cpu_pct=90.0,
                        server_cpu_s=10.0),
            "cross": m(rate=90000.0, p50=2000.0, p99=5000.0, cpu_per_unit=11e-6, load_cpu_pct=50.0,
                       proc_cpu_s={"node a": 4.0, "node b": 4.0, "redis": 3.0}),
            "redis": m(rate=400000.0, p50=700.0, p99=8000.0, load_cpu_pct=99.0),
            "single-paced": m(rate=45000.0, p50=100.0, p99=300.0, paced_rate=45000.0),
            "cross-paced": m(rate=45000.0, p50=350.0, p99=900.0, paced_rate=45000.0),
        }
        v = compare.cluster_verdicts(medians)
        self.assertAlmostEqual(v["ratio"], 0.45)
        self.assertTrue(v["ratio_met"])
        self.assertAlmostEqual(v["p50_delta_us"], 250.0)
        self.assertTrue(v["p50_delta_met"])
        self.assertAlmostEqual(v["cross_over_redis"], 0.225)
        text, _ = compare.cluster_table(medians, 80)
        self.assertIn("cross/single msgs/s: 0.45x (target >= 0.4x: met)", text)
        self.assertIn("+250 us (target <= +300 us: met)", text)
        self.assertIn("node a 4.00 s", text)
        self.assertIn("(45,000/s)", text)
        self.assertEqual(len([x for x in text.splitlines() if "redis-benchmark PUBLISH 80 B" in x]), 1)

        medians["cross"]["rate"] = 60000.0
        medians["cross-paced"]["p50"] = 500.0
        v = compare.cluster_verdicts(medians)
        self.assertFalse(v["ratio_met"])
        self.assertFalse(v["p50_delta_met"])
        text, _ = compare.cluster_table(medians, 80)
        self.assertIn("0.30x (target >= 0.4x: NOT MET)", text)
        self.assertIn("+400 us (target <= +300 us: NOT MET)", text)
        self.assertNotIn("WARNING", text)
        medians["single"]["other_pct"] = 80.0
        text, _ = compare.cluster_table(medians, 80)
        warning = [x for x in text.splitlines() if x.startswith("WARNING")]
        self.assertEqual(len(warning), 1)
        self.assertIn("single node", warning[0])
        self.assertNotIn("cross-node", warning[0])
        # A pass that never ran gives no verdict rather than a wrong one.
        v = compare.cluster_verdicts({"single": m(rate=1.0)})
        self.assertIsNone(v["ratio_met"])
        self.assertIsNone(v["p50_delta_met"])


if __name__ == "__main__":
    unittest.main()
