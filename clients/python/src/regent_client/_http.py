"""Requests to a Regent cluster: JSON with a bearer token, one node at a time, moving to the
next node when one cannot be reached or cannot serve (502/503/504, draining)."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import urllib.parse
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

__all__ = ["Nodes", "Answer", "Unreachable", "RegentError"]


class RegentError(Exception):
    """An answer the API refused, with its status and machine code (docs/api.md)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class Unreachable(Exception):
    """A request that got no answer this node could give; the client moved to the next node."""


class Answer:
    __slots__ = ("status", "body", "node")

    def __init__(self, status: int, body: Any, node: str) -> None:
        self.status = status
        self.body = body
        self.node = node

    @property
    def error_code(self) -> str:
        err = self.body.get("error") if isinstance(self.body, dict) else None
        return str(err.get("code", "")) if isinstance(err, dict) else ""

    @property
    def error_message(self) -> str:
        err = self.body.get("error") if isinstance(self.body, dict) else None
        return str(err.get("message", "")) if isinstance(err, dict) else str(self.body)

    def raise_for_status(self) -> "Answer":
        if self.status >= 400:
            raise RegentError(self.status, self.error_code, self.error_message)
        return self


class Nodes:
    """The cluster's base URLs and the one requests go to now."""

    def __init__(
        self,
        urls: Sequence[str],
        token: str,
        ca_file: Optional[str] = None,
        client_cert: Optional[str] = None,
        client_key: Optional[str] = None,
    ) -> None:
        if not urls:
            raise ValueError("urls: give at least one node's base URL")
        parsed = []
        for url in urls:
            p = urllib.parse.urlsplit(url)
            if p.scheme not in ("http", "https") or not p.hostname or p.query:
                raise ValueError(f"urls: {url!r} is not an http:// or https:// base URL")
            parsed.append(p)
        if not token or any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in token):
            raise ValueError("token: empty or not printable ASCII")
        if (client_cert is None) != (client_key is None):
            raise ValueError("client_cert and client_key go together")
        self._urls = parsed
        self._token = token
        self._index = 0
        self._lock = threading.Lock()
        self._context: Optional[ssl.SSLContext] = None
        if any(p.scheme == "https" for p in parsed):
            ctx = ssl.create_default_context(cafile=ca_file)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if client_cert and client_key:
                ctx.load_cert_chain(client_cert, client_key)
            self._context = ctx

    @property
    def urls(self) -> List[str]:
        return [urllib.parse.urlunsplit(p) for p in self._urls]

    def _current(self) -> Tuple[int, urllib.parse.SplitResult]:
        with self._lock:
            return self._index, self._urls[self._index % len(self._urls)]

    def _move_on(self, index: int) -> None:
        with self._lock:
            if self._index == index:
                self._index = (index + 1) % len(self._urls)

    def _connection(self, node: urllib.parse.SplitResult, timeout: float) -> http.client.HTTPConnection:
        if node.scheme == "https":
            return http.client.HTTPSConnection(node.hostname, node.port or 443, timeout=timeout, context=self._context)
        return http.client.HTTPConnection(node.hostname, node.port or 80, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float = 15.0,
        raw: Optional[bytes] = None,
        content_type: str = "application/json",
        headers: Optional[Dict[str, str]] = None,
    ) -> Answer:
        """One request to the current node. A transport failure or a 502/503/504 moves on to
        the next node and raises Unreachable; any other answer is returned."""
        index, node = self._current()
        base = node.path.rstrip("/")
        name = urllib.parse.urlunsplit(node)
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        send_headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        if data is not None:
            send_headers["Content-Type"] = content_type
        send_headers.update(headers or {})
        conn = self._connection(node, timeout)
        try:
            conn.request(method, base + path, body=data, headers=send_headers)
            response = conn.getresponse()
            payload = response.read()
            status = response.status
        except (OSError, http.client.HTTPException, socket.timeout) as e:
            self._move_on(index)
            raise Unreachable(f"{name}: {e!r}") from e
        finally:
            conn.close()
        try:
            parsed: Any = json.loads(payload) if payload else None
        except ValueError:
            parsed = payload.decode("utf-8", "replace")
        answer = Answer(status, parsed, name)
        if status in (502, 503, 504):
            self._move_on(index)
            raise Unreachable(f"{name}: answered {status} {answer.error_code}: {answer.error_message}")
        return answer

    def stream(self, path: str, headers: Dict[str, str], timeout: float) -> Iterator[bytes]:
        """The lines of a streaming GET (server-sent events) from the current node."""
        index, node = self._current()
        conn = self._connection(node, timeout)
        try:
            conn.request("GET", node.path.rstrip("/") + path, headers={"Authorization": f"Bearer {self._token}", **headers})
            response = conn.getresponse()
            if response.status != 200:
                body = response.read()
                try:
                    parsed: Any = json.loads(body)
                except ValueError:
                    parsed = body.decode("utf-8", "replace")
                Answer(response.status, parsed, urllib.parse.urlunsplit(node)).raise_for_status()
            while True:
                line = response.readline()
                if not line:
                    return
                yield line
        except (OSError, http.client.HTTPException) as e:
            self._move_on(index)
            raise Unreachable(f"{urllib.parse.urlunsplit(node)}: {e!r}") from e
        finally:
            conn.close()
