#!/usr/bin/env python3
"""Unit tests of bench/compare's parsing (no server, no load generator):

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


if __name__ == "__main__":
    unittest.main()
