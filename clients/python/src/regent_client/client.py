"""A small client for Regent's runs, packages and event stream."""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
import urllib.parse
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

from ._http import Nodes, RegentError, Unreachable

__all__ = ["Client"]


class Client:
    """Starts, lists, signals, cancels and retries runs; deploys packages; tails events.

    Requests go to one node and move to the next when it cannot be reached; a request that
    is safe to repeat (reads, and starts with an idempotency key, signals with a signal id)
    is retried there.
    """

    def __init__(
        self,
        urls: Sequence[str],
        token: str,
        ca_file: Optional[str] = None,
        client_cert: Optional[str] = None,
        client_key: Optional[str] = None,
        timeout: float = 15.0,
        retries: int = 3,
    ) -> None:
        self.nodes = Nodes(urls, token, ca_file, client_cert, client_key)
        self.timeout = timeout
        self.retries = retries

    def _call(self, method: str, path: str, body: Any = None, repeatable: bool = True, **kw: Any) -> Any:
        tries = self.retries if repeatable else 1
        for n in range(tries):
            try:
                return self.nodes.request(method, path, body, timeout=self.timeout, **kw).raise_for_status().body
            except Unreachable:
                if n == tries - 1:
                    raise
                time.sleep(0.1 * (2 ** n))
        raise AssertionError("unreachable")

    # Runs ------------------------------------------------------------------------------

    def start_run(
        self,
        workflow_type: str,
        input: Any = None,
        idempotency_key: Optional[str] = None,
        deadline_ms: Optional[int] = None,
        budget: Optional[Dict[str, Any]] = None,
        version: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Starts a run: ``{"run_id", "created", ...}``. With an idempotency key a repeat
        answers the same run (and is retried on another node when a node fails)."""
        body: Dict[str, Any] = {"workflow_type": workflow_type, "input": input if input is not None else {}}
        for key, value in (("idempotency_key", idempotency_key), ("deadline_ms", deadline_ms), ("budget", budget), ("version", version)):
            if value is not None:
                body[key] = value
        return self._call("POST", "/v1/runs", body, repeatable=idempotency_key is not None)

    def get_run(self, run_id: str) -> Dict[str, Any]:
        return self._call("GET", f"/v1/runs/{urllib.parse.quote(run_id)}")

    def list_runs(self, workflow_type: Optional[str] = None, state: Optional[str] = None, max_pages: int = 10) -> List[Dict[str, Any]]:
        """Run summaries, newest first, following the listing's cursor for up to ``max_pages`` pages."""
        runs: List[Dict[str, Any]] = []
        after: Optional[str] = None
        for _ in range(max_pages):
            query = {k: v for k, v in (("type", workflow_type), ("state", state), ("after", after)) if v is not None}
            page = self._call("GET", "/v1/runs" + ("?" + urllib.parse.urlencode(query) if query else ""))
            runs.extend(page.get("runs", []))
            after = page.get("next_cursor")
            if not after:
                break
        return runs

    def wait_run(self, run_id: str, timeout: float = 60.0, poll: float = 0.2) -> Dict[str, Any]:
        """Polls until the run has finished (succeeded, failed or cancelled); TimeoutError otherwise."""
        deadline = time.time() + timeout
        while True:
            run = self.get_run(run_id)
            if run.get("state") in ("succeeded", "failed", "cancelled"):
                return run
            if time.time() >= deadline:
                raise TimeoutError(f"run {run_id} is still {run.get('state')} after {timeout}s")
            time.sleep(poll)

    def cancel_run(self, run_id: str, reason: str = "cancelled by a client") -> Dict[str, Any]:
        return self._call("POST", f"/v1/runs/{urllib.parse.quote(run_id)}/cancel", {"reason": reason})

    def signal_run(self, run_id: str, name: str, data: Any = None, signal_id: Optional[str] = None) -> Dict[str, Any]:
        """Sends signal ``name`` with ``data`` (the waiting step's output). With a signal id, a
        resend is the same delivery (and is retried on another node when a node fails)."""
        body: Dict[str, Any] = {"data": data}
        if signal_id is not None:
            body["signal_id"] = signal_id
        path = f"/v1/runs/{urllib.parse.quote(run_id)}/signals/{urllib.parse.quote(name)}"
        return self._call("POST", path, body, repeatable=signal_id is not None)

    def retry_run(self, run_id: str, steps: str = "failed", budget_limit: Optional[float] = None) -> Dict[str, Any]:
        body: Dict[str, Any] = {"steps": steps}
        if budget_limit is not None:
            body["budget_limit"] = budget_limit
        return self._call("POST", f"/v1/runs/{urllib.parse.quote(run_id)}/retry", body, repeatable=False)

    # Packages --------------------------------------------------------------------------

    def deploy_package(self, package: Union[str, bytes]) -> Dict[str, Any]:
        """Deploys a package (admin token): a directory holding workflow.json, a .tar/.tar.gz
        file, or the archive's bytes. Re-deploying a stored version stores nothing."""
        if isinstance(package, bytes):
            data = package
        elif os.path.isdir(package):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as tar:
                for root, dirs, files in os.walk(package):
                    dirs.sort()
                    for name in sorted(files):
                        full = os.path.join(root, name)
                        tar.add(full, arcname=os.path.relpath(full, package), recursive=False)
            data = buf.getvalue()
        else:
            with open(package, "rb") as f:
                data = f.read()
        return self._call("POST", "/v1/packages", raw=data, content_type="application/octet-stream")

    # Events ----------------------------------------------------------------------------

    def events(self, topics: Sequence[str] = (), after: Optional[int] = None, reconnect: bool = True) -> Iterator[Dict[str, Any]]:
        """The event bus as a generator of ``{"id", "topic", "publisher", "published_at",
        "payload"}``, in id order, after ``after`` (0: from the oldest kept; None: from now).
        A dropped stream is resumed from the last id seen, so nothing is missed or repeated."""
        last = after
        while True:
            query = [("topic", t) for t in topics]
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            path = "/v1/events" + ("?" + urllib.parse.urlencode(query) if query else "")
            data: List[str] = []
            try:
                for raw in self.nodes.stream(path, headers, timeout=60.0):
                    line = raw.decode("utf-8").rstrip("\r\n")
                    if line.startswith("data:"):
                        data.append(line[5:].lstrip())
                    elif line == "" and data:
                        event = json.loads("\n".join(data))
                        data = []
                        last = int(event["id"])
                        yield event
            except Unreachable:
                if not reconnect:
                    raise
                time.sleep(0.2)
                continue
            if not reconnect:
                return


__all__ += ["RegentError"]
