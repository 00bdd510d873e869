"""Tests of the progress helper (standard library only; no torch needed).

Run with ``python3 -m unittest test_vigil`` from this directory.
"""

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import types
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vigil  # noqa: E402


class _Agent:
    """A local HTTP server that records the bodies posted to /v1/progress."""

    def __init__(self, status=202, delay=0.0):
        self.records = []
        self.paths = []
        self.lock = threading.Lock()
        agent = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n).decode()
                if delay:
                    time.sleep(delay)
                with agent.lock:
                    agent.paths.append(self.path)
                    agent.records.extend(json.loads(l) for l in body.splitlines() if l.strip())
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"accepted\n")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, n, timeout=5.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if len(self.records) >= n:
                    return list(self.records)
            time.sleep(0.01)
        with self.lock:
            return list(self.records)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class _Bucket:
    def __init__(self, last):
        self.last = last

    def is_last(self):
        return self.last


class ProgressTest(unittest.TestCase):
    def setUp(self):
        self.agent = _Agent()

    def tearDown(self):
        self.agent.close()

    def test_records_arrive_in_order_with_job_and_rank(self):
        p = vigil.Progress(url=self.agent.url, job="pretrain")
        self.assertTrue(p.start(rank=3, world_size=4, card=1, local_rank=1))
        p.step(7, "begin")
        p.step(7, "collective")
        p.step(7, "end", samples=32, tokens=65536)
        p.checkpoint(7, "/ckpt/step-7", nbytes=10, sha256="ab")
        self.assertTrue(p.end())
        recs = self.agent.wait_for(6)
        self.assertEqual([r["type"] for r in recs], ["start", "step", "step", "step", "checkpoint", "end"])
        self.assertEqual([r.get("phase") for r in recs[1:4]], ["begin", "collective", "end"])
        for r in recs:
            self.assertEqual(r["job"], "pretrain")
            self.assertEqual(r["rank"], 3)
        self.assertEqual(recs[0]["world_size"], 4)
        self.assertEqual(recs[0]["card"], 1)
        self.assertEqual(recs[0]["pid"], os.getpid())
        self.assertEqual((recs[3]["samples"], recs[3]["tokens"]), (32, 65536))
        self.assertEqual((recs[4]["bytes"], recs[4]["sha256"]), (10, "ab"))
        self.assertEqual(recs[5]["status"], "ok")
        self.assertTrue(all(path == "/v1/progress" for path in self.agent.paths))
        self.assertEqual(p.sent, 6)
        self.assertEqual(p.dropped, 0)

    def test_environment_is_read(self):
        old = dict(os.environ)
        try:
            os.environ["VIGIL_PROGRESS_URL"] = self.agent.url + "/"
            os.environ["VIGIL_JOB"] = "envjob"
            p = vigil.Progress(rank=0)
            p.step(1)
            p.flush()
        finally:
            os.environ.clear()
            os.environ.update(old)
        recs = self.agent.wait_for(1)
        self.assertEqual(recs[0]["job"], "envjob")
        self.assertEqual(recs[0]["phase"], "end")

    def test_without_url_or_job_nothing_is_sent(self):
        old = dict(os.environ)
        try:
            os.environ.pop("VIGIL_PROGRESS_URL", None)
            os.environ.pop("VIGIL_JOB", None)
            self.assertFalse(vigil.Progress().step(1))
            self.assertFalse(vigil.Progress(url=self.agent.url).step(1))
        finally:
            os.environ.clear()
            os.environ.update(old)
        time.sleep(0.1)
        self.assertEqual(self.agent.records, [])

    def test_collective_hook_reports_once_per_step_and_delegates(self):
        calls = []
        fake = types.ModuleType("default_hooks")

        def allreduce_hook(process_group, bucket):
            calls.append((process_group, bucket))
            return "future-%d" % len(calls)

        fake.allreduce_hook = allreduce_hook
        names = [
            "torch",
            "torch.distributed",
            "torch.distributed.algorithms",
            "torch.distributed.algorithms.ddp_comm_hooks",
        ]
        saved = {n: sys.modules.get(n) for n in names + [names[-1] + ".default_hooks"]}
        try:
            for n in names:
                sys.modules[n] = types.ModuleType(n)
            sys.modules[names[-1]].default_hooks = fake
            sys.modules[names[-1] + ".default_hooks"] = fake

            p = vigil.Progress(url=self.agent.url, job="ddp", rank=1)
            state = vigil.CollectiveHookState(p, process_group="pg")
            for step in (1, 2):
                p.step(step, "begin")
                # Three buckets per step; the last one re-arms the hook.
                results = [vigil.collective_hook(state, _Bucket(last=(i == 2))) for i in range(3)]
                p.step(step, "end")
            p.flush()
        finally:
            for n, m in saved.items():
                if m is None:
                    sys.modules.pop(n, None)
                else:
                    sys.modules[n] = m
        self.assertEqual(len(calls), 6)
        self.assertTrue(all(pg == "pg" for pg, _ in calls))
        self.assertEqual(results, ["future-4", "future-5", "future-6"])
        recs = self.agent.wait_for(6)
        self.assertEqual(
            [(r["step"], r["phase"]) for r in recs],
            [(1, "begin"), (1, "collective"), (1, "end"), (2, "begin"), (2, "collective"), (2, "end")],
        )

    def test_hook_without_begin_reports_the_next_step(self):
        p = vigil.Progress(url=self.agent.url, job="ddp", rank=0)
        self.assertFalse(p.collective())  # no step known yet
        p.step(4, "end")
        p.collective()
        p.flush()
        recs = self.agent.wait_for(2)
        self.assertEqual([(r["step"], r["phase"]) for r in recs], [(4, "end"), (5, "collective")])

    def test_register_collective_hook(self):
        registered = []

        class FakeDDP:
            def register_comm_hook(self, state, hook):
                registered.append((state, hook))

        class Broken:
            def register_comm_hook(self, state, hook):
                raise RuntimeError("already registered")

        p = vigil.Progress(url=self.agent.url, job="ddp", rank=0)
        self.assertTrue(p.register_collective_hook(FakeDDP()))
        self.assertIs(registered[0][1], vigil.collective_hook)
        self.assertIs(registered[0][0].progress, p)
        self.assertFalse(p.register_collective_hook(Broken()))

    def test_module_imports_without_torch(self):
        # sys.modules["torch"] = None makes any `import torch` fail.
        code = (
            "import sys; sys.path.insert(0, %r); sys.modules['torch'] = None; "
            "import vigil; vigil.Progress(url='http://127.0.0.1:1', job='j').step(1); "
            "print('imported')" % os.path.dirname(os.path.abspath(__file__))
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("imported", out.stdout)


class AgentAwayTest(unittest.TestCase):
    def test_calls_return_quickly_and_never_raise(self):
        p = vigil.Progress(url="http://127.0.0.1:%d" % _closed_port(), job="j", rank=0)
        t0 = time.monotonic()
        for s in range(200):
            p.step(s, "begin")
            p.step(s, "end")
        p.checkpoint(1, "/x")
        elapsed = time.monotonic() - t0
        self.assertLess(elapsed, 0.5, "calls blocked for %.3fs" % elapsed)
        t0 = time.monotonic()
        self.assertTrue(p.end())  # queued; delivery fails quietly
        self.assertLess(time.monotonic() - t0, p.flush_timeout + 0.5)
        self.assertTrue(p.flush(timeout=5))
        self.assertEqual(p.sent, 0)
        self.assertEqual(p.dropped, 402)

    def test_a_full_queue_drops_instead_of_blocking(self):
        slow = _Agent(delay=0.5)
        try:
            p = vigil.Progress(url=slow.url, job="j", rank=0, queue_size=4, timeout=0.2)
            t0 = time.monotonic()
            results = [p.step(s) for s in range(100)]
            self.assertLess(time.monotonic() - t0, 0.5)
            self.assertIn(False, results)
            self.assertGreater(p.dropped, 0)
        finally:
            slow.close()

    def test_an_agent_refusing_records_does_not_raise(self):
        bad = _Agent(status=400)
        try:
            p = vigil.Progress(url=bad.url, job="j", rank=0)
            self.assertTrue(p.step(1))
            self.assertTrue(p.flush())
            self.assertEqual((p.sent, p.dropped), (0, 1))
        finally:
            bad.close()

    def test_unserializable_values_do_not_raise(self):
        p = vigil.Progress(url="http://127.0.0.1:1", job="j", rank=0)
        self.assertFalse(p.checkpoint(1, object()))


if __name__ == "__main__":
    unittest.main()
