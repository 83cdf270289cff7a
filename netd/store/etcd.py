"""The etcd store: the Store protocol over etcd v3's JSON gateway (`/v3`).

Why this shape (see docs/store.md): etcd3gw gives a plain `requests` session with
etcd's error handling and no gRPC/protobuf dependency, but its helpers hide revisions.
So this module speaks the raw range/txn/deleterange/lease requests (keys and values
base64) to keep create_revision/mod_revision/header.revision, and reads the watch
stream itself because etcd3gw's Watcher drops the `compact_revision` cancel that tells
a watcher it fell behind compaction.
"""

from __future__ import annotations

import base64
import contextlib
import json
import queue
import re
import socket
import threading
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import urlsplit

import requests
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import ConnectionFailedError, ConnectionTimeoutError, Etcd3Exception

from netd.errors import Compacted, InvalidInput, NetdError, NotFound, StoreUnavailable
from netd.store.base import (
    CommitResult,
    Condition,
    ConditionalWrites,
    Delete,
    DeletePrefix,
    KeyValue,
    Operation,
    Put,
    WatchEvent,
)

DEFAULT_PORT = 2379
REQUEST_TIMEOUT = 5.0
API_PATH = "/v3/"  # etcd >= 3.4; saves a /version round trip per client


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def _unb64(text: str | None) -> str:
    return base64.b64decode(text).decode() if text else ""


def _range(prefix: str) -> dict[str, str]:
    """etcd's key/range_end pair selecting every key that starts with prefix."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return {"key": _b64(b"\0"), "range_end": _b64(b"\0")}
    end = bytes(raw[:-1]) + bytes([raw[-1] + 1])
    return {"key": _b64(prefix), "range_end": _b64(end)}


def _keyvalue(kv: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_unb64(kv["key"]),
        value=_unb64(kv.get("value")),
        create_revision=int(kv.get("create_revision", 0)),
        mod_revision=int(kv.get("mod_revision", 0)),
        lease=int(kv.get("lease", 0)),
    )


def _revision(response: dict[str, Any]) -> int:
    return int(response.get("header", {}).get("revision", 0))


def parse_endpoint(endpoint: str) -> tuple[str, str, int]:
    """'h:2379', 'http://h:2379' or 'https://[::1]:2379' -> (protocol, host, port)."""
    text = endpoint.strip()
    parts = urlsplit(text if "://" in text else f"http://{text}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise InvalidInput(f"bad etcd endpoint {endpoint!r}: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise InvalidInput(f"bad etcd endpoint {endpoint!r}: expected HOST:PORT or http://HOST:PORT")
    return parts.scheme, parts.hostname, port


def _reason(exc: BaseException) -> str:
    """The useful tail of a requests/urllib3 connection error ('[Errno 111] Connection refused')."""
    text = getattr(exc, "detail_text", None) or str(exc)
    found = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if found:
        return found.group(0).strip()
    return "timed out" if "timed out" in text else type(exc).__name__


def _error_message(exc: Etcd3Exception) -> str:
    detail = exc.detail_text or ""
    try:
        body = json.loads(detail)
        return str(body.get("message") or body.get("error") or detail)
    except (ValueError, AttributeError):
        return detail or str(exc) or type(exc).__name__


class EtcdStore(ConditionalWrites):
    """A Store over one etcd cluster; thread-safe (one HTTP session per thread)."""

    def __init__(self, endpoints: Sequence[str], timeout: float = REQUEST_TIMEOUT) -> None:
        if not endpoints:
            raise InvalidInput("no etcd endpoint given; use etcd://HOST:PORT[,HOST:PORT...]")
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        self.timeout = timeout
        self._preferred = 0
        self._local = threading.local()
        self._clients: list[Etcd3Client] = []
        self._lock = threading.Lock()

    def _name(self, index: int) -> str:
        protocol, host, port = self.endpoints[index]
        return f"{protocol}://{host}:{port}"

    def _client(self, index: int) -> Etcd3Client:
        clients: dict[int, Etcd3Client] = self._local.__dict__.setdefault("clients", {})
        if index not in clients:
            protocol, host, port = self.endpoints[index]
            client = Etcd3Client(
                host=host, port=port, protocol=protocol, timeout=self.timeout, api_path=API_PATH
            )
            clients[index] = client
            with self._lock:
                self._clients.append(client)
        return clients[index]

    def _order(self) -> list[int]:
        first = self._preferred
        return [first] + [i for i in range(len(self.endpoints)) if i != first]

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One request, moved to the next endpoint only when it surely never arrived."""
        failures = []
        for index in self._order():
            client = self._client(index)
            try:
                result: dict[str, Any] = client.post(client.get_url(path), json=body)
            except ConnectionFailedError as exc:
                failures.append(f"{self._name(index)} ({_reason(exc)})")
                continue
            except ConnectionTimeoutError as exc:
                message = _error_message(exc)
                if "connect timeout" in message.lower():
                    failures.append(f"{self._name(index)} (connect timeout)")
                    continue
                raise StoreUnavailable(
                    f"etcd at {self._name(index)} did not answer {path} within {self.timeout} s"
                ) from exc
            except Etcd3Exception as exc:
                raise self._refused(index, path, exc) from exc
            self._preferred = index
            return result
        raise StoreUnavailable(
            "etcd unreachable at " + ", ".join(failures) + "; check that etcd runs there"
        )

    def _refused(self, index: int, path: str, exc: Etcd3Exception) -> NetdError:
        message = _error_message(exc)
        if "lease not found" in message:
            return NotFound("lease not found (expired or revoked); grant a new one")
        if "duplicate key" in message:
            return InvalidInput("one key is written twice (or written and deleted) in one commit")
        if "required revision has been compacted" in message:
            return Compacted(f"etcd: {message}")
        if "future revision" in message:
            return InvalidInput(f"etcd: {message}")
        return StoreUnavailable(f"etcd at {self._name(index)} refused {path}: {message}")

    # -- Store protocol ------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        kvs = self._post("/kv/range", {"key": _b64(key)}).get("kvs", [])
        return _keyvalue(kvs[0]) if kvs else None

    def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        body = {**_range(prefix), "sort_order": "ASCEND", "sort_target": "KEY"}
        response = self._post("/kv/range", body)
        return [_keyvalue(kv) for kv in response.get("kvs", [])], _revision(response)

    def put(self, key: str, value: str, lease: int = 0) -> int:
        body = {"key": _b64(key), "value": _b64(value), "lease": lease}
        return _revision(self._post("/kv/put", body))

    def delete(self, key: str) -> bool:
        return int(self._post("/kv/deleterange", {"key": _b64(key)}).get("deleted", 0)) > 0

    def commit(
        self, conditions: Sequence[Condition], operations: Sequence[Operation]
    ) -> CommitResult:
        compare = [
            {"key": _b64(c.key), "target": "MOD", "result": "EQUAL", "mod_revision": c.mod_revision}
            if c.mod_revision
            else {"key": _b64(c.key), "target": "VERSION", "result": "EQUAL", "version": 0}
            for c in conditions
        ]
        success: list[dict[str, Any]] = []
        for op in operations:
            if isinstance(op, Put):
                put = {"key": _b64(op.key), "value": _b64(op.value), "lease": op.lease}
                success.append({"request_put": put})
            elif isinstance(op, Delete):
                success.append({"request_delete_range": {"key": _b64(op.key)}})
            elif isinstance(op, DeletePrefix):
                success.append({"request_delete_range": _range(op.prefix)})
        response = self._post("/kv/txn", {"compare": compare, "success": success})
        return CommitResult(bool(response.get("succeeded", False)), _revision(response))

    def revision(self) -> int:
        return _revision(self._post("/kv/range", {"key": _b64("\0"), "count_only": True}))

    def grant_lease(self, ttl: int) -> int:
        if ttl <= 0:
            raise InvalidInput(f"lease TTL must be a positive number of seconds, not {ttl}")
        response = self._post("/lease/grant", {"TTL": ttl, "ID": 0})
        if response.get("error") or not response.get("ID"):
            raise StoreUnavailable(f"etcd refused a {ttl} s lease: {response.get('error')}")
        return int(response["ID"])

    def keepalive(self, lease: int) -> bool:
        response = self._post("/lease/keepalive", {"ID": lease})
        return int(response.get("result", {}).get("TTL", 0)) > 0

    def revoke_lease(self, lease: int) -> None:
        with contextlib.suppress(NotFound):
            self._post("/kv/lease/revoke", {"ID": lease})

    def watch(self, prefix: str, start_revision: int) -> EtcdWatch:
        if start_revision <= 0:
            start_revision = self.revision() + 1
        return EtcdWatch(self, prefix, start_revision)

    def compact(self, revision: int) -> None:
        """Forget history before `revision`: watches from earlier revisions raise Compacted."""
        with contextlib.suppress(Compacted):
            self._post("/kv/compaction", {"revision": revision, "physical": True})

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.session.close()


class EtcdWatch:
    """One watch stream, read by a thread of its own into a queue that `get` drains."""

    def __init__(self, store: EtcdStore, prefix: str, start_revision: int) -> None:
        self._queue: queue.Queue[list[WatchEvent] | NetdError] = queue.Queue()
        self._error: NetdError | None = None
        self._closed = False
        self._client, self._response = self._open(store, prefix, start_revision)
        self._thread = threading.Thread(
            target=self._read, name=f"etcd-watch {prefix}", daemon=True
        )
        self._thread.start()

    def _open(
        self, store: EtcdStore, prefix: str, start_revision: int
    ) -> tuple[Etcd3Client, requests.Response]:
        body = {"create_request": {**_range(prefix), "start_revision": start_revision}}
        failures = []
        for index in store._order():
            protocol, host, port = store.endpoints[index]
            client = Etcd3Client(host=host, port=port, protocol=protocol, api_path=API_PATH)
            try:
                response = client.session.post(
                    client.get_url("/watch"), json=cast(Any, body), stream=True,
                    timeout=(store.timeout, None),
                )
            except requests.RequestException as exc:
                client.session.close()
                failures.append(f"{store._name(index)} ({_reason(exc)})")
                continue
            if response.status_code != 200:
                client.session.close()
                raise StoreUnavailable(
                    f"etcd at {store._name(index)} refused a watch: {response.text.strip()}"
                )
            self._endpoint = store._name(index)
            return client, response
        raise StoreUnavailable(
            "etcd unreachable at " + ", ".join(failures) + "; check that etcd runs there"
        )

    def _read(self) -> None:
        buffer = b""
        try:
            for chunk in self._response.iter_content(chunk_size=None):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip() and not self._handle(json.loads(line)):
                        return
            problem = "the stream ended"
        except (requests.RequestException, OSError, ValueError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if not self._closed:
            self._queue.put(StoreUnavailable(
                f"watch connection to etcd at {self._endpoint} broke ({problem}); "
                "re-list and watch again"
            ))

    def _handle(self, message: dict[str, Any]) -> bool:
        """Queue what one stream message says; False once the watch is over."""
        if "error" in message:
            error = message["error"]
            text = error.get("message", error) if isinstance(error, dict) else error
            self._queue.put(StoreUnavailable(f"etcd at {self._endpoint} ended a watch: {text}"))
            return False
        result = message.get("result", {})
        compact_revision = int(result.get("compact_revision", 0))
        if compact_revision:
            self._queue.put(Compacted(
                f"etcd compacted history up to revision {compact_revision}; "
                "re-list and watch again",
                compact_revision,
            ))
            return False
        if result.get("canceled"):
            reason = result.get("cancel_reason", "no reason given")
            self._queue.put(
                StoreUnavailable(f"etcd at {self._endpoint} canceled a watch: {reason}")
            )
            return False
        events = [
            WatchEvent(
                type="delete" if event.get("type") == "DELETE" else "put",
                key=_unb64(event["kv"]["key"]),
                value=None if event.get("type") == "DELETE" else _unb64(event["kv"].get("value")),
                revision=int(event["kv"]["mod_revision"]),
            )
            for event in result.get("events", [])
        ]
        if events:
            self._queue.put(events)
        return True

    def get(self, timeout: float) -> list[WatchEvent]:
        if self._error is not None:
            raise self._error
        events: list[WatchEvent] = []
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            while True:
                if isinstance(item, NetdError):
                    self._error = item
                    if events:
                        return events
                    raise item
                events.extend(item)
                item = self._queue.get_nowait()
        except queue.Empty:
            return events

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            fileno = self._response.raw._fp.fileno()
            with socket.fromfd(fileno, socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        self._response.close()
        self._client.session.close()
        self._thread.join(timeout=2)
