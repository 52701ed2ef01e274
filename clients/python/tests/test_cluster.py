"""regent-client against a real cluster (issue 29).

The cluster comes from the Swift test suite's fixture (Tests/RegentHTTPTests/PythonClientTests.swift):
two `regent serve` nodes on a private PostgreSQL, and these environment variables:
REGENT_TEST_URLS (the nodes' base URLs, comma-separated), REGENT_TEST_NODE_PIDS (their pids,
same order), REGENT_TEST_ADMIN_TOKEN and REGENT_TEST_WORKER_TOKEN. Without them every test is
skipped, saying so. The tests run in name order; the last one SIGKILLs a node.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import socketserver
import tempfile
import threading
import time
import unittest
from typing import Any, Callable, Dict, List

from regent_client import Cancelled, Client, NonRetryable, Worker

URLS = [u for u in os.environ.get("REGENT_TEST_URLS", "").split(",") if u]
PIDS = [int(p) for p in os.environ.get("REGENT_TEST_NODE_PIDS", "").split(",") if p]
ADMIN = os.environ.get("REGENT_TEST_ADMIN_TOKEN", "")
WORKER = os.environ.get("REGENT_TEST_WORKER_TOKEN", "")


def eventually(condition: Callable[[], bool], timeout: float = 45.0, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def deploy(client: Client, manifest: str) -> None:
    directory = tempfile.mkdtemp(prefix="regent-py-pkg-")
    try:
        with open(os.path.join(directory, "workflow.json"), "w") as f:
            f.write(manifest)
        client.deploy_package(directory)
    finally:
        shutil.rmtree(directory)


class Running:
    """A worker in a thread of its own, shut down (gracefully) on exit."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.error: List[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as e:  # reported by the test
            self.error.append(e)

    def __enter__(self) -> Worker:
        self.thread.start()
        return self.worker

    def __exit__(self, *exc: Any) -> None:
        self.worker.shutdown()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the worker did not stop"
        assert not self.error, f"the worker failed: {self.error}"


class DroppingProxy(socketserver.ThreadingTCPServer):
    """An HTTP proxy in front of one node that, for the first `drops` requests to `path`,
    forwards the request (the node does the work and commits), reads the answer and then
    cuts the client's connection without sending it: the worker never hears that it counted."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: str, path: str, drops: int) -> None:
        host, port = upstream.split("://", 1)[1].rstrip("/").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.path = path
        self.drops = drops
        self.dropped = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), DroppingProxy.Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            proxy: DroppingProxy = self.server  # type: ignore[assignment]
            request_line = self.rfile.readline().decode()
            if not request_line:
                return
            method, path, _ = request_line.split(" ", 2)
            headers: Dict[str, str] = {}
            while True:
                line = self.rfile.readline().decode()
                if line in ("\r\n", "\n", ""):
                    break
                name, value = line.split(":", 1)
                headers[name.strip()] = value.strip()
            body = self.rfile.read(int(headers.get("Content-Length", "0")))
            upstream = http.client.HTTPConnection(*proxy.upstream, timeout=30)
            upstream.request(method, path, body=body or None, headers={k: v for k, v in headers.items() if k.lower() != "connection"})
            response = upstream.getresponse()
            payload = response.read()
            upstream.close()
            with proxy.lock:
                drop = path == proxy.path and proxy.dropped < proxy.drops
                if drop:
                    proxy.dropped += 1
            if drop:
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            head = f"HTTP/1.1 {response.status} {response.reason}\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n"
            ctype = response.getheader("Content-Type")
            if ctype:
                head += f"Content-Type: {ctype}\r\n"
            self.wfile.write(head.encode() + b"\r\n" + payload)


@unittest.skipUnless(URLS and ADMIN and WORKER, "no cluster: run through the Swift tests (scripts/test.sh), which start one")
class ClusterTests(unittest.TestCase):
    def setUp(self) -> None:
        self.admin = Client(URLS, ADMIN)
        self.client = Client(URLS, WORKER)

    def worker(self, lanes: List[str], **kw: Any) -> Worker:
        kw.setdefault("long_poll", 1.0)
        kw.setdefault("request_timeout", 5.0)
        kw.setdefault("shutdown_grace", 5.0)
        return Worker(URLS, WORKER, lanes=lanes, **kw)

    def test_1_a_cancelled_runs_handler_sees_cancellation_and_a_shutdown_hands_back(self) -> None:
        deploy(self.admin, '{"workflow_type": "py.slow", "steps": [{"name": "wait", "lane": "pyslow", "timeout": "3s", "max_attempts": 3}]}')
        began: List[float] = []
        cancelled: List[float] = []

        worker = self.worker(["pyslow"], instance_id="py-slow", shutdown_grace=0.3)

        @worker.step("wait")
        def wait(ctx: Any, _input: Any) -> Dict[str, Any]:
            began.append(time.time())
            try:
                ctx.sleep(60)
            except Cancelled:
                cancelled.append(time.time())
                raise
            return {"late": True}

        with Running(worker):
            run = self.client.start_run("py.slow", {"n": 1})["run_id"]
            eventually(lambda: bool(began), what="the step to start")
            time.sleep(4)  # past its 3 s timeout: renewals keep it
            self.assertEqual(self.client.get_run(run)["state"], "running")
            self.assertEqual(cancelled, [])
            at = time.time()
            self.client.cancel_run(run, "test")
            eventually(lambda: bool(cancelled), timeout=10, what="the handler to see the cancellation")
            self.assertLess(cancelled[0] - at, 3.0, "cancelled within a renewal period (1 s), with slack")
            eventually(lambda: worker.tally.lost == 1, what="the lost lease to be counted")
            self.assertEqual(self.client.get_run(run)["state"], "cancelled")
            # A shutdown while a step runs: handed back (queued again, with the reason).
            second = self.client.start_run("py.slow", {"n": 2})["run_id"]
            eventually(lambda: len(began) == 2, what="the second step to start")
        step = self.client.get_run(second)["steps"][0]
        self.assertEqual(step["state"], "queued", step)
        self.assertIn("handed back", step.get("error") or "", step)
        self.assertEqual(worker.tally.completed, 0)

    def test_2_a_completion_whose_answer_is_dropped_is_retried_and_counts_once(self) -> None:
        deploy(self.admin, '{"workflow_type": "py.once", "steps": [{"name": "a", "lane": "pyonce"}, {"name": "b", "lane": "pyonce", "after": ["a"]}]}')
        proxy = DroppingProxy(URLS[-1], "/v1/leases/complete-batch", drops=2)
        calls: Dict[str, int] = {}
        worker = Worker([proxy.url], WORKER, lanes=["pyonce"], instance_id="py-once", long_poll=1.0, request_timeout=3.0, batch_completions=False)

        @worker.fallback
        def any_step(ctx: Any, _input: Any) -> Dict[str, Any]:
            calls[ctx.step] = calls.get(ctx.step, 0) + 1
            return {"step": ctx.step}

        try:
            with Running(worker):
                run = self.client.start_run("py.once", {})["run_id"]
                done = self.client.wait_run(run, timeout=45)
        finally:
            proxy.shutdown()
        self.assertEqual(done["state"], "succeeded", done)
        self.assertEqual(proxy.dropped, 2, "both answers were cut after the commit")
        self.assertEqual(calls, {"a": 1, "b": 1}, "each step ran once")
        self.assertEqual([s["attempts"] for s in done["steps"]], [1, 1], "one attempt each, none reclaimed")
        self.assertEqual((worker.tally.completed, worker.tally.lost, worker.tally.dropped), (2, 0, 0))

    def test_3_the_client_signals_lists_retries_and_tails_events(self) -> None:
        deploy(
            self.admin,
            '{"workflow_type": "py.approval", "steps": [{"name": "prep", "lane": "pyapp"}, '
            '{"name": "approve", "after": ["prep"], "wait_for": "approval", "timeout": "1h"}, '
            '{"name": "finish", "lane": "pyapp", "after": ["approve", "prep"], "max_attempts": 1}]}',
        )
        failures = [0]
        worker = self.worker(["pyapp"], instance_id="py-app")

        @worker.step("prep")
        def prep(ctx: Any, order: Dict[str, Any]) -> Dict[str, Any]:
            return {"order": order["order"]}

        @worker.step("finish")
        def finish(ctx: Any, _input: Any) -> Dict[str, Any]:
            if ctx.input.get("fail") and failures[0] == 0:
                failures[0] += 1
                raise NonRetryable("the warehouse said no")
            return {"approved_by": ctx.outputs["approve"]["by"], "order": ctx.outputs["prep"]["order"]}

        with Running(worker):
            run = self.client.start_run("py.approval", {"order": 9}, idempotency_key="py-approval-9")["run_id"]
            self.assertEqual(self.client.start_run("py.approval", {"order": 9}, idempotency_key="py-approval-9")["run_id"], run)
            # A signal sent early is kept for the wait; the resend with its id is the same delivery.
            first = self.client.signal_run(run, "approval", {"by": "ana"}, signal_id="sig-1")
            again = self.client.signal_run(run, "approval", {"by": "ana"}, signal_id="sig-1")
            self.assertTrue(again.get("duplicate"), again)
            self.assertFalse(first.get("duplicate"), first)
            done = self.client.wait_run(run)
            self.assertEqual(done["state"], "succeeded", done)
            self.assertEqual(done["steps"][-1]["output"], {"approved_by": "ana", "order": 9})
            self.assertIn(run, [r["run_id"] for r in self.client.list_runs("py.approval")])
            # A run that fails for good, resumed from the failed step.
            failing = self.client.start_run("py.approval", {"order": 10, "fail": True})["run_id"]
            self.client.signal_run(failing, "approval", {"by": "bo"})
            self.assertEqual(self.client.wait_run(failing)["state"], "failed")
            self.client.retry_run(failing)
            resumed = self.client.wait_run(failing)
            self.assertEqual(resumed["state"], "succeeded", resumed)
            self.assertEqual(resumed["steps"][0]["attempts"], 1, "prep kept its output")
        # The event stream from the start carries both runs' success.
        seen = set()
        for event in self.client.events(topics=["run.succeeded"], after=0, reconnect=False):
            seen.add(event["payload"].get("run_id"))
            if {run, failing} <= seen:
                break
        self.assertTrue({run, failing} <= seen)

    def test_3b_a_step_reads_the_vault_secret_it_was_granted_and_nothing_else(self) -> None:
        put = self.admin.nodes.request("PUT", "/v1/vault/secret?path=py/api-key", {"value": "py-secret-value"})
        self.assertEqual(put.status, 201, put.body)
        deploy(
            self.admin,
            '{"workflow_type": "py.vault", "steps": [{"name": "use", "lane": "pyvault", "secrets": ["py/api-key"]}, '
            '{"name": "snoop", "lane": "pyvault", "after": ["use"], "max_attempts": 1}]}',
        )
        worker = self.worker(["pyvault"], instance_id="py-vault")

        @worker.step("use")
        def use(ctx: Any, _input: Any) -> Dict[str, Any]:
            return {"length": len(ctx.secret("py/api-key"))}

        @worker.step("snoop")
        def snoop(ctx: Any, _input: Any) -> Dict[str, Any]:
            ctx.secret("py/api-key")
            return {}

        with Running(worker):
            run = self.client.start_run("py.vault", {})["run_id"]
            done = self.client.wait_run(run)
        self.assertEqual(done["state"], "failed", done)
        self.assertEqual(done["steps"][0]["output"], {"length": 15})
        self.assertIn("403", done["steps"][1]["error"])
        self.assertNotIn("py-secret-value", str(done))

    def test_4_runs_finish_exactly_once_while_a_node_is_killed(self) -> None:
        self.assertEqual(len(URLS), 2, "two nodes")
        deploy(
            self.admin,
            '{"workflow_type": "py.orders", "budget": {"limit": 1000, "unit": "cents"}, "steps": ['
            '{"name": "quote", "lane": "pyorders", "timeout": "5s"}, '
            '{"name": "charge", "lane": "pyorders", "after": ["quote"], "timeout": "5s"}]}',
        )
        lock = threading.Lock()
        calls: Dict[str, int] = {}

        def handlers(worker: Worker) -> Worker:
            @worker.step("quote")
            def quote(ctx: Any, order: Dict[str, Any]) -> Dict[str, Any]:
                with lock:
                    calls[ctx.run_id + "/quote"] = calls.get(ctx.run_id + "/quote", 0) + 1
                ctx.sleep(0.05)
                return {"price": order["n"] * 10}

            @worker.step("charge")
            def charge(ctx: Any, order: Dict[str, Any]) -> Dict[str, Any]:
                with lock:
                    calls[ctx.run_id + "/charge"] = calls.get(ctx.run_id + "/charge", 0) + 1
                ctx.sleep(0.05)
                ctx.report_cost(3, unit="cents")
                return {"charged": ctx.outputs["quote"]["price"]}

            return worker

        a = handlers(Worker(URLS, WORKER, lanes=["pyorders"], instance_id="py-a", long_poll=1.0, request_timeout=3.0, max_concurrent_steps=4))
        b = handlers(Worker(list(reversed(URLS)), WORKER, lanes=["pyorders"], instance_id="py-b", long_poll=1.0, request_timeout=3.0, max_concurrent_steps=4))
        runs = [self.client.start_run("py.orders", {"n": n}, idempotency_key=f"py-order-{n}")["run_id"] for n in range(1, 31)]
        with Running(a), Running(b):
            eventually(lambda: a.tally.completed + b.tally.completed >= 10, what="a third of the work")
            os.kill(PIDS[0], signal.SIGKILL)
            survivor = Client(URLS[1:], WORKER)
            finished = [survivor.wait_run(r, timeout=60) for r in runs]
        for n, run in enumerate(finished, start=1):
            self.assertEqual(run["state"], "succeeded", run)
            self.assertEqual(run["steps"][1]["output"], {"charged": n * 10})
            # Exactly once: one accepted completion per step (one ledger entry per run), whatever was retried.
            self.assertEqual([e["amount"] for e in run["ledger"]], [3], run["ledger"])
        self.assertEqual(len(calls), 60)
        # A step runs again only when its lease was lost with the dying node's answer (then it expired and was reclaimed).
        self.assertLessEqual(sum(calls.values()) - 60, 8, calls)


if __name__ == "__main__":
    unittest.main()
