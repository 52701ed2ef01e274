"""A Regent step worker over the HTTP API.

Each claimed step runs in a thread of its own with its lease renewed in the background every
third of its length. When the run is cancelled or the lease is lost, the step's context is
cancelled (``ctx.cancelled`` is set; ``ctx.sleep`` and ``ctx.check_cancelled`` raise
``Cancelled``) and nothing the handler returns is completed. Python threads cannot be stopped
from outside: a handler that never looks at its context runs to its end, and its result is
dropped.
"""

from __future__ import annotations

import base64
import logging
import os
import random
import signal
import socket
import threading
import time
from datetime import datetime
from typing import Any, Callable, Dict, List, Optional, Sequence

from ._http import Answer, Nodes, RegentError, Unreachable

__all__ = ["Worker", "StepContext", "NonRetryable", "Cancelled", "Tally"]

log = logging.getLogger("regent.worker")


class NonRetryable(Exception):
    """Raised by a handler: the step fails for good (no more attempts), with this message."""


class Cancelled(Exception):
    """The step's run was cancelled or its lease was lost: stop working on it."""


def _parse_instant(text: str) -> float:
    """An RFC 3339 instant as a Unix time (Python 3.9's fromisoformat wants at most 6 digits
    of fraction and +00:00 for Z)."""
    t = text.replace("Z", "+00:00")
    if "." in t:
        head, rest = t.split(".", 1)
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits):]
        t = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    return datetime.fromisoformat(t).timestamp()


class StepContext:
    """What a handler knows about the step it is doing."""

    def __init__(
        self, lease: Dict[str, Any], worker_logger: logging.Logger, secret_reader: Optional[Callable[[str], bytes]] = None
    ) -> None:
        self._secret_reader = secret_reader
        payload = lease.get("payload") or {}
        self.run_id: str = lease.get("run_id", "")
        self.step: str = lease.get("step", "")
        self.attempt: int = int(lease.get("attempt_index", 1))
        self.package_hash: str = lease.get("package_hash", "")
        self.execution_id: str = lease["execution_id"]
        self.lane: str = lease.get("lane", "")
        #: The run's input.
        self.input: Any = payload.get("input", payload) if isinstance(payload, dict) else payload
        #: The outputs of the steps this one runs after, by step name.
        self.outputs: Dict[str, Any] = dict(payload.get("after") or {}) if isinstance(payload, dict) else {}
        #: Set when the run is cancelled, the lease is lost or the worker hands the step back.
        self.cancelled = threading.Event()
        self.logger = logging.LoggerAdapter(
            worker_logger,
            {"run_id": self.run_id, "step": self.step, "attempt": self.attempt, "package_hash": self.package_hash, "execution_id": self.execution_id},
        )
        self._costs: List[Dict[str, Any]] = []
        self._lock = threading.Lock()

    def report_cost(self, amount: float, unit: Optional[str] = None) -> None:
        """Records what this attempt cost, sent with its completion (the run's budget ledger)."""
        item: Dict[str, Any] = {"amount": amount}
        if unit is not None:
            item["unit"] = unit
        with self._lock:
            self._costs.append(item)

    def secret_bytes(self, path: str) -> bytes:
        """A vault secret this step was granted (its manifest step's or its enqueue's `secrets`),
        read with this attempt's lease; the node audits the read. Do not log it. A secret the
        step was not granted, or a lost lease, raises NonRetryable (docs/vault.md)."""
        if self._secret_reader is None:
            raise NonRetryable(f"step {self.step} has no node to read secret {path} from")
        return self._secret_reader(path)

    def secret(self, path: str) -> str:
        """A vault secret as UTF-8 text (see secret_bytes)."""
        data = self.secret_bytes(path)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise NonRetryable(f"secret {path} is not UTF-8 text; read it with secret_bytes") from None

    def check_cancelled(self) -> None:
        """Raises Cancelled when the step should stop."""
        if self.cancelled.is_set():
            raise Cancelled(f"step {self.step} of run {self.run_id} was cancelled")

    def sleep(self, seconds: float) -> None:
        """Sleeps, waking with Cancelled as soon as the step is cancelled."""
        if self.cancelled.wait(seconds):
            self.check_cancelled()

    @property
    def costs(self) -> List[Dict[str, Any]]:
        with self._lock:
            return list(self._costs)


class Tally:
    """How the steps a worker took ended."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.completed = 0
        self.failed = 0
        self.lost = 0
        self.dropped = 0

    def add(self, what: str) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)


def _default_instance_id() -> str:
    host = "".join(c if c.isalnum() or c in "_.:-" else "-" for c in socket.gethostname())[:80]
    return f"{host}-{os.getpid()}-{random.randrange(16 ** 4):04x}"


class _Completion:
    __slots__ = ("execution_id", "item", "give_up_at")

    def __init__(self, lease: Dict[str, Any], output: Dict[str, Any], costs: List[Dict[str, Any]], worker: str) -> None:
        self.execution_id = lease["execution_id"]
        item: Dict[str, Any] = {
            "execution_id": lease["execution_id"],
            "lease_epoch": lease["lease_epoch"],
            "worker_instance_id": worker,
            "output": output,
        }
        if lease.get("run_id"):
            item["run_id"] = lease["run_id"]
        if costs:
            item["cost"] = costs
        self.item = item
        self.give_up_at = max(_parse_instant(lease["lease_expires_at"]), time.time()) + 120


Handler = Callable[[StepContext, Any], Any]


class Worker:
    """Registers, claims steps of its lanes, runs their handlers and reports them.

    ``urls``: the nodes' base URLs (failover in order); ``token``: a worker-role token.
    """

    def __init__(
        self,
        urls: Sequence[str],
        token: str,
        lanes: Sequence[str] = ("default",),
        capabilities: Sequence[str] = (),
        namespace: str = "runs",
        worker_id: str = "regent-worker-py",
        instance_id: Optional[str] = None,
        max_concurrent_steps: int = 8,
        long_poll: float = 10.0,
        batch_completions: bool = True,
        liveness_ttl: float = 30.0,
        request_timeout: float = 15.0,
        shutdown_grace: float = 30.0,
        ca_file: Optional[str] = None,
        client_cert: Optional[str] = None,
        client_key: Optional[str] = None,
        logger: Optional[logging.Logger] = None,
    ) -> None:
        self.instance_id = instance_id or _default_instance_id()
        for field, value in [("namespace", namespace), ("worker_id", worker_id), ("instance_id", self.instance_id)] + [
            ("lanes", x) for x in lanes
        ] + [("capabilities", x) for x in capabilities]:
            if not (1 <= len(value.encode()) <= 128) or any(not (c.isascii() and (c.isalnum() or c in "_.:-")) for c in value):
                raise ValueError(f"{field}: {value!r} must be 1-128 letters, digits or _ . : -")
        if not lanes:
            raise ValueError("lanes: give at least one lane")
        if not 1 <= max_concurrent_steps <= 1000:
            raise ValueError("max_concurrent_steps: 1 to 1000")
        if not 0 <= long_poll <= 30:
            raise ValueError("long_poll: 0 to 30 seconds")
        self.nodes = Nodes(urls, token, ca_file, client_cert, client_key)
        self.namespace = namespace
        self.lanes = list(lanes)
        self.capabilities = list(capabilities)
        self.worker_id = worker_id
        self.max_concurrent_steps = max_concurrent_steps
        self.long_poll = long_poll
        self.batch_completions = batch_completions
        self.liveness_ttl = liveness_ttl
        self.request_timeout = request_timeout
        self.shutdown_grace = shutdown_grace
        self.log = logger or log
        self.tally = Tally()
        self._handlers: Dict[str, Handler] = {}
        self._fallback: Optional[Handler] = None
        self._cond = threading.Condition()
        self._running: Dict[str, StepContext] = {}
        self._outbox: List[_Completion] = []
        self._claimer_parked = False
        self._outbox_closed = False
        self._stopping = threading.Event()

    # Handlers --------------------------------------------------------------------------

    def step(self, name: str) -> Callable[[Handler], Handler]:
        """Decorates ``handler(ctx, input)`` as the handler of step ``name``. It returns the
        step's output: a dict (any other JSON value is stored as ``{"value": ...}``)."""

        def register(handler: Handler) -> Handler:
            self._handlers[name] = handler
            return handler

        return register

    def fallback(self, handler: Handler) -> Handler:
        """Decorates the handler of every step without one of its own."""
        self._fallback = handler
        return handler

    # Lifecycle -------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Begins a graceful shutdown: no new claims; running steps get ``shutdown_grace`` to
        finish, then are cancelled and handed back; completions are flushed; the worker
        deregisters and ``run`` returns."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT shut the worker down gracefully (call from the main thread)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.shutdown())

    def run(self) -> None:
        """Runs until ``shutdown``. Raises RegentError for what no retry can mend (a refused token)."""
        self._register()
        self.log.info("worker started", extra={"worker_instance_id": self.instance_id})
        threads = [
            threading.Thread(target=self._heartbeats, name="regent-heartbeat", daemon=True),
            threading.Thread(target=self._flushes, name="regent-flush", daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            self._claim_loop()
        finally:
            self._stopping.set()
            self._drain()
            with self._cond:
                self._outbox_closed = True
                self._cond.notify_all()
            for t in threads:
                t.join(timeout=self.request_timeout * 3)
            self._deregister()
            self.log.info("worker stopped: %d completed, %d failed, %d lost", self.tally.completed, self.tally.failed, self.tally.lost)

    # Registry --------------------------------------------------------------------------

    def _register(self) -> None:
        body = {
            "namespace": self.namespace,
            "worker_instance_id": self.instance_id,
            "worker_id": self.worker_id,
            "lanes": self.lanes,
            "capabilities": self.capabilities,
            "liveness_ttl_ms": int(self.liveness_ttl * 1000),
        }
        delay = 0.1
        while not self._stopping.is_set():
            try:
                self.nodes.request("POST", "/v1/workers/register", body, timeout=self.request_timeout).raise_for_status()
                return
            except Unreachable as e:
                self.log.warning("could not register; retrying in %.1fs: %s", delay, e)
            self._stopping.wait(delay)
            delay = min(delay * 2, 5.0)

    def _deregister(self) -> None:
        for _ in range(max(2, len(self.nodes.urls))):
            try:
                self.nodes.request("POST", "/v1/workers/deregister", {"namespace": self.namespace, "worker_instance_id": self.instance_id}, timeout=self.request_timeout)
                return
            except Unreachable:
                continue
        self.log.warning("could not deregister; the registry's liveness TTL will retire this instance")

    def _heartbeats(self) -> None:
        body = {"namespace": self.namespace, "worker_instance_id": self.instance_id}
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._outbox_closed, timeout=self.liveness_ttl / 3)
                if self._outbox_closed:
                    return
            try:
                if self.nodes.request("POST", "/v1/workers/heartbeat", body, timeout=self.request_timeout).status == 404:
                    self.log.info("the registry no longer knows this worker; registering again")
                    self._register()
            except (Unreachable, RegentError) as e:
                self.log.debug("heartbeat failed: %s", e)

    # Claims ----------------------------------------------------------------------------

    def _next_claim(self) -> Optional[tuple]:
        with self._cond:
            while True:
                if self._stopping.is_set():
                    return None
                room = self.max_concurrent_steps - len(self._running)
                if room > 0:
                    taken = self._outbox if self.batch_completions else []
                    if self.batch_completions:
                        self._outbox = []
                    self._claimer_parked = True
                    self._cond.notify_all()
                    return room, taken
                self._claimer_parked = True
                self._cond.notify_all()
                self._cond.wait()

    def _requeue(self, items: List[_Completion]) -> None:
        if items:
            with self._cond:
                self._outbox[0:0] = items
                self._cond.notify_all()

    def _claim_loop(self) -> None:
        base = {"namespace": self.namespace, "worker_instance_id": self.instance_id, "lanes": self.lanes, "capabilities": self.capabilities}
        delay = 0.05
        while True:
            nxt = self._next_claim()
            if nxt is None:
                return
            room, completions = nxt
            body = dict(base, limit=room)
            if completions:
                path, timeout = "/v1/leases/complete-and-claim", self.request_timeout
                body["completions"] = [c.item for c in completions]
            else:
                path, timeout = "/v1/leases/claim", self.request_timeout + self.long_poll
                body["wait_ms"] = int(self.long_poll * 1000)
            try:
                answer = self.nodes.request("POST", path, body, timeout=timeout)
            except Unreachable as e:
                self._requeue(completions)
                self.log.warning("claim failed; retrying in %.2fs: %s", delay, e)
                self._stopping.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            finally:
                with self._cond:
                    self._claimer_parked = False
            if answer.status == 200:
                delay = 0.05
                self._report(completions, answer)
                for lease in answer.body.get("leases", []):
                    self._start(lease)
            elif answer.status == 404 and answer.error_code == "not_registered":
                self._report(completions, answer)  # applied even though the claim was refused
                self.log.info("the registry no longer knows this worker; registering again")
                self._register()
            elif answer.status == 429:
                self._requeue(completions)
                self._stopping.wait(delay)
                delay = min(delay * 2, 5.0)
            else:
                self._requeue(completions)
                answer.raise_for_status()

    def _read_secret(self, lease: Dict[str, Any], path: str) -> bytes:
        body = {"execution_id": lease["execution_id"], "lease_epoch": lease["lease_epoch"], "worker_instance_id": self.instance_id, "path": path}
        answer = self.nodes.request("POST", "/v1/vault/lease-read", body, timeout=self.request_timeout)
        if answer.status != 200:
            raise NonRetryable(f"reading secret {path} was refused ({answer.status} {answer.error_code})")
        if "value" in answer.body:
            return str(answer.body["value"]).encode("utf-8")
        return base64.b64decode(answer.body["value_base64"])

    def _start(self, lease: Dict[str, Any]) -> None:
        ctx = StepContext(lease, self.log, secret_reader=lambda path: self._read_secret(lease, path))
        with self._cond:
            self._running[lease["execution_id"]] = ctx
        threading.Thread(target=self._perform, args=(lease, ctx), name=f"regent-step-{ctx.step}", daemon=True).start()

    # One step --------------------------------------------------------------------------

    def _perform(self, lease: Dict[str, Any], ctx: StepContext) -> None:
        lost = threading.Event()
        done = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(lease, ctx, lost, done), daemon=True)
        renewer.start()
        try:
            handler = self._handlers.get(ctx.step) or self._fallback
            if handler is None:
                self._fail(lease, f"worker {self.instance_id} has no handler for step {ctx.step or '(none)'}", True)
                return
            try:
                output = handler(ctx, ctx.input)
            except NonRetryable as e:
                if lost.is_set():
                    self.tally.add("lost")
                else:
                    self._fail(lease, str(e), False)
                return
            except Exception as e:  # the attempt fails and is retried as the manifest says
                if lost.is_set():
                    self.tally.add("lost")
                elif ctx.cancelled.is_set() and self._stopping.is_set():
                    self._fail(lease, f"handed back: worker {self.instance_id} shut down before the step finished", True)
                else:
                    self._fail(lease, f"{type(e).__name__}: {e}", True)
                return
            if lost.is_set():
                # The run was cancelled or the lease reclaimed while it ran: its result is not completed.
                self.tally.add("lost")
                return
            if not isinstance(output, dict):
                output = {"value": output}
            with self._cond:
                self._outbox.append(_Completion(lease, output, ctx.costs, self.instance_id))
                self._cond.notify_all()
        finally:
            done.set()
            with self._cond:
                self._running.pop(lease["execution_id"], None)
                self._cond.notify_all()

    def _renew(self, lease: Dict[str, Any], ctx: StepContext, lost: threading.Event, done: threading.Event) -> None:
        body = {"execution_id": lease["execution_id"], "lease_epoch": lease["lease_epoch"], "worker_instance_id": self.instance_id}
        expires = _parse_instant(lease["lease_expires_at"])
        period = max(0.1, (expires - time.time()) / 3)
        while not done.wait(period):
            try:
                answer = self.nodes.request("POST", "/v1/leases/renew", body, timeout=min(self.request_timeout, max(period, 1.0)))
            except Unreachable:
                if time.time() >= expires:
                    break
                period = min(1.0, max(0.05, (expires - time.time()) / 3))
                continue
            if answer.status == 200:
                expires = _parse_instant(answer.body["lease_expires_at"])
                period = max(0.1, (expires - time.time()) / 3)
            elif answer.status in (403, 404, 409):
                break
            else:
                self.log.warning("renewal answered %s %s", answer.status, answer.error_code)
                period = 0.2
        else:
            return
        lost.set()
        ctx.cancelled.set()
        ctx.logger.warning("lease lost (the run was cancelled or finished, or the lease was reclaimed): the step is cancelled")

    def _fail(self, lease: Dict[str, Any], message: str, retryable: bool) -> None:
        self.tally.add("failed")
        body = {
            "execution_id": lease["execution_id"],
            "lease_epoch": lease["lease_epoch"],
            "worker_instance_id": self.instance_id,
            "error": message[:1000],
            "retryable": retryable,
        }
        give_up = _parse_instant(lease["lease_expires_at"]) + 60
        delay = 0.05
        while time.time() < give_up:
            try:
                answer = self.nodes.request("POST", "/v1/leases/fail", body, timeout=self.request_timeout)
                if answer.status not in (200, 409):
                    self.log.error("failing an attempt answered %s %s: %s", answer.status, answer.error_code, answer.error_message)
                return
            except Unreachable:
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    # Completions -----------------------------------------------------------------------

    def _flushes(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: (self._outbox and (self._claimer_parked or self._outbox_closed or self._stopping.is_set() or not self.batch_completions))
                    or (self._outbox_closed and not self._outbox)
                )
                if self._outbox_closed and not self._outbox:
                    return
                batch, self._outbox = self._outbox, []
                patience = self.request_timeout * 2 if self._stopping.is_set() else None
            self._send(batch, patience)

    def _send(self, items: List[_Completion], patience: Optional[float]) -> None:
        """Sends completions until answered: a lost answer is retried (on the next node), and
        the server tells a repeat that it counted (``already_completed``)."""
        until = time.time() + patience if patience is not None else None
        pending = list(items)
        delay = 0.05
        while pending:
            batch = pending[:1000]
            try:
                answer = self.nodes.request("POST", "/v1/leases/complete-batch", {"completions": [c.item for c in batch]}, timeout=self.request_timeout)
                if answer.status == 429 or answer.status >= 500:
                    raise Unreachable(f"answered {answer.status}")
                if answer.status != 200:
                    self.log.error("completions refused: %s %s: %s", answer.status, answer.error_code, answer.error_message)
                    for _ in batch:
                        self.tally.add("dropped")
                else:
                    self._report(batch, answer)
                del pending[: len(batch)]
                delay = 0.05
            except Unreachable as e:
                now = time.time()
                out_of_patience = until is not None and now >= until
                keep = [] if out_of_patience else [c for c in pending if c.give_up_at > now]
                for c in pending:
                    if c not in keep:
                        self.log.error("could not send the completion of %s; dropping it (its lease expires and the step runs again)", c.execution_id)
                        self.tally.add("dropped")
                pending = keep
                if pending:
                    self.log.warning("completions not sent; retrying in %.2fs: %s", delay, e)
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)

    def _report(self, items: List[_Completion], answer: Answer) -> None:
        if not items:
            return
        stale = set(answer.body.get("stale", [])) if isinstance(answer.body, dict) else set()
        for c in items:
            if c.execution_id in stale:
                self.log.warning("completion of %s refused: the lease was lost", c.execution_id)
                self.tally.add("lost")
            else:
                self.tally.add("completed")

    def _drain(self) -> None:
        """Waits up to the grace period for running steps; then cancels and hands back the rest."""
        deadline = time.time() + self.shutdown_grace
        with self._cond:
            self._cond.wait_for(lambda: not self._running, timeout=max(0.0, deadline - time.time()))
            left = list(self._running.values())
        if not left:
            return
        self.log.info("shutdown grace over; cancelling %d running steps and handing them back", len(left))
        for ctx in left:
            ctx.cancelled.set()
        # A handler that looks at its context returns now (and hands its step back); one that
        # does not keeps its thread, and its lease expires.
        with self._cond:
            self._cond.wait_for(lambda: not self._running, timeout=self.request_timeout)
