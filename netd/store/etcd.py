"""The etcd store: the Store protocol over etcd v3's JSON gateway (`/v3`).

Why this shape (see docs/store.md): a plain `requests` session per thread and member,
no gRPC/protobuf dependency. This module speaks the raw range/txn/deleterange/lease
requests (keys and values base64) to keep create_revision/mod_revision/header.revision,
and reads the watch stream itself because a watcher must see the `compact_revision`
cancel that tells it it fell behind compaction.

Liveness (docs/store.md, "When a member goes silent"): a member that vanishes without a
reset (power loss, partition, cut link) leaves TCP connections open and silent. So every
connection has a short connect timeout and TCP keepalive/user timeouts; reads that hang
move to the next member; a write that hangs is reported as unknown, never re-sent; and
a watch that has been silent for a second is checked by a cheap request to its member,
so a dead or frozen member surfaces as StoreUnavailable within a few seconds and the
caller re-lists and re-watches, on a member that answers.

TLS and auth: `https` endpoints verify the server against a CA file, present a client
certificate when given one, and a user/password gets a token from
`/v3/auth/authenticate` sent as the Authorization header; the watch uses the same.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import queue
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

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

log = logging.getLogger(__name__)

DEFAULT_PORT = 2379
REQUEST_TIMEOUT = 5.0  # a write's whole answer
CONNECT_TIMEOUT = 1.0  # a member that does not accept within this is skipped
READ_TIMEOUT = 2.0  # a read that a member accepted but does not answer: next member
DOWN_FOR = 5.0  # a member that failed is tried last for this long
WATCH_PROBE_AFTER = 1.0  # a watch silent this long has its member probed...
WATCH_PROBE_TIMEOUT = 1.0  # ...which must answer within this, or the watch is dead
API_PATH = "/v3/"  # etcd >= 3.4
# the kernel gives up on a connection whose peer stopped acknowledging (cut link)
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT, USER_TIMEOUT_MS = 2, 1, 2, 4000


@dataclass(frozen=True)
class EtcdSecurity:
    """TLS and authentication for every request and watch: file paths and credentials."""

    ca: str = ""  # CA bundle to verify the members against (default: the system's)
    cert: str = ""  # client certificate (PEM), with `key`
    key: str = ""
    user: str = ""  # etcd user, with `password`: requests carry its auth token
    password: str = ""

    def check(self) -> None:
        """Refuse half-given or unreadable settings, before anything is sent."""
        if bool(self.cert) != bool(self.key):
            raise InvalidInput("--store-cert and --store-key must be given together")
        if bool(self.user) != bool(self.password):
            raise InvalidInput("--store-user and --store-password must be given together")
        for flag, path in (("--store-ca", self.ca), ("--store-cert", self.cert),
                           ("--store-key", self.key)):
            if path and not Path(path).is_file():
                raise InvalidInput(f"{flag} {path}: no such file")


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
    """The useful tail of a requests/urllib3 error ('[Errno 111] Connection refused')."""
    text = str(exc)
    tls = re.search(r"\[SSL[^\]]*\] ([^'\"(]+)", text)
    if tls or isinstance(exc, requests.exceptions.SSLError):
        detail = tls.group(1).strip() if tls else text
        return f"TLS failed: {detail}"
    found = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if found:
        return found.group(0).strip()
    if re.search(r"Connection aborted|RemoteDisconnected|BadStatusLine", text):
        return "closed the connection without an answer"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connect timeout"
    return "timed out" if "timed out" in text else type(exc).__name__


def _error_message(response: requests.Response) -> str:
    try:
        body = response.json()
        return str(body.get("message") or body.get("error") or response.text)
    except (ValueError, AttributeError):
        return response.text.strip() or f"HTTP {response.status_code} {response.reason}"


def _unreachable(failures: Sequence[str]) -> str:
    hint = ("check --store-ca, --store-cert and --store-key" if "TLS failed" in str(failures)
            else "check that etcd runs there")
    return "etcd unreachable at " + ", ".join(failures) + f"; {hint}"


def _system_cas() -> str | bool:
    """The system's CA bundle (OpenSSL's default), else requests' own."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return candidate
    return True


class _KeepaliveAdapter(HTTPAdapter):
    """Connections the kernel abandons when the peer stops acknowledging."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        options = [
            (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
            (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
            (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE),
            (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL),
            (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT),
            (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS),
        ]
        kwargs["socket_options"] = options
        super().init_poolmanager(*args, **kwargs)


class _Unreached(Exception):
    """The request got no answer from the member; `maybe_sent`: it may have arrived."""

    def __init__(self, reason: str, maybe_sent: bool = False) -> None:
        super().__init__(reason)
        self.maybe_sent = maybe_sent


def _before_sending(exc: requests.RequestException) -> bool:
    """True when the connection failed before a byte of the request could arrive."""
    if isinstance(exc, requests.exceptions.ConnectTimeout | requests.exceptions.SSLError):
        return True
    return "NewConnectionError" in str(exc) or "Failed to establish" in str(exc)


class EtcdStore(ConditionalWrites):
    """A Store over one etcd cluster; thread-safe (a request borrows an idle HTTP session
    of its member: requests sessions are not guaranteed thread-safe, and a session per
    thread would leave a connection open for every API thread that ever ran)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        timeout: float = REQUEST_TIMEOUT,
        security: EtcdSecurity | None = None,
    ) -> None:
        if not endpoints:
            raise InvalidInput("no etcd endpoint given; use etcd://HOST:PORT[,HOST:PORT...]")
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        self.timeout = timeout
        self.security = security or EtcdSecurity()
        self.security.check()
        self._preferred = 0
        self._down_until: dict[int, float] = {}
        self._tokens: dict[int, str] = {}
        self._idle: dict[int, list[requests.Session]] = {}
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def _name(self, index: int) -> str:
        protocol, host, port = self.endpoints[index]
        return f"{protocol}://{host}:{port}"

    def _url(self, index: int, path: str) -> str:
        protocol, host, port = self.endpoints[index]
        host = f"[{host}]" if ":" in host else host
        return f"{protocol}://{host}:{port}{API_PATH}{path.lstrip('/')}"

    def new_session(self, owned: bool = True) -> requests.Session:
        """A session with this store's TLS settings and keepalive; closed by close()
        unless `owned` is False (then the caller closes it)."""
        session = requests.Session()
        session.trust_env = False  # no proxy or CA bundle from the environment: our settings
        adapter = _KeepaliveAdapter()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.verify = self.security.ca or _system_cas()
        if self.security.cert:
            session.cert = (self.security.cert, self.security.key)
        if owned:
            with self._lock:
                self._sessions.append(session)
        return session

    @contextlib.contextmanager
    def _borrow(self, index: int) -> Iterator[requests.Session]:
        """An idle session for member `index`, returned after use: one request per
        session at a time, and no more sessions (connections) than concurrent requests."""
        with self._lock:
            idle = self._idle.setdefault(index, [])
            session = idle.pop() if idle else None
        if session is None:
            session = self.new_session()
        try:
            yield session
        finally:
            with self._lock:
                self._idle[index].append(session)

    def _order(self) -> list[int]:
        """Members to try: the last that answered, others, and recently failed ones last."""
        now = time.monotonic()
        first = self._preferred
        ordered = [first] + [i for i in range(len(self.endpoints)) if i != first]
        up = [i for i in ordered if self._down_until.get(i, 0.0) <= now]
        return up + [i for i in ordered if i not in up]

    def mark_down(self, index: int) -> None:
        self._down_until[index] = time.monotonic() + DOWN_FOR
        if self._preferred == index:
            self._preferred = (index + 1) % len(self.endpoints)

    def headers(self, index: int, session: requests.Session, refresh: bool = False
                ) -> dict[str, str]:
        """The Authorization header for member `index` (none without a user)."""
        if not self.security.user:
            return {}
        if refresh or index not in self._tokens:
            body = {"name": self.security.user, "password": self.security.password}
            try:
                response = session.post(
                    self._url(index, "/auth/authenticate"), json=body,
                    timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
                )
            except requests.RequestException as exc:
                raise _Unreached(_reason(exc)) from exc
            if response.status_code != 200:
                message = _error_message(response)
                hint = ("etcd's JSON gateway refuses a client certificate with a CommonName "
                        "when auth is enabled: use one without" if "CommonName" in message
                        else "check --store-user and --store-password")
                raise StoreUnavailable(
                    f"etcd at {self._name(index)} refused user {self.security.user!r}: "
                    f"{message}; {hint}"
                )
            self._tokens[index] = str(response.json().get("token", ""))
        return {"Authorization": self._tokens[index]}

    def forget_token(self, index: int) -> None:
        """Member `index` refused our token: the next request authenticates again."""
        self._tokens.pop(index, None)

    def _send(self, index: int, path: str, body: dict[str, Any], read_timeout: float
              ) -> dict[str, Any]:
        """One request to one member. _Unreached: it never got there; ReadTimeout: it
        got there and no answer came; StoreUnavailable/others: the member refused."""
        with self._borrow(index) as session:
            return self._send_on(session, index, path, body, read_timeout)

    def _send_on(self, session: requests.Session, index: int, path: str,
                 body: dict[str, Any], read_timeout: float) -> dict[str, Any]:
        for attempt in range(2):
            headers = self.headers(index, session, refresh=attempt > 0)
            try:
                response = session.post(
                    self._url(index, path), json=body, headers=headers,
                    timeout=(CONNECT_TIMEOUT, read_timeout),
                )
            except requests.exceptions.ReadTimeout:
                raise
            except requests.RequestException as exc:
                reason = _reason(exc)
                if self.endpoints[index][0] == "http" and "without an answer" in reason:
                    reason += "; if etcd speaks TLS, use etcds://"
                raise _Unreached(reason, maybe_sent=not _before_sending(exc)) from exc
            if response.status_code == 200:
                result: dict[str, Any] = response.json()
                return result
            message = _error_message(response)
            if self.security.user and "token" in message and attempt == 0:
                continue  # an expired or unknown auth token: authenticate again
            if response.status_code in (503, 504) and "leader" in message.lower():
                # "no leader" refuses before proposing; a leader change mid-request
                # leaves a write's fate open
                raise _Unreached(message, maybe_sent="no leader" not in message.lower())
            raise self._refused(index, path, message)
        raise AssertionError("unreachable")

    def _post(self, path: str, body: dict[str, Any], write: bool = False) -> dict[str, Any]:
        """One request, moved to the next member when it surely never arrived, or when
        it is a read that a member accepted but did not answer. A write that got no
        answer may have been applied: it is reported, never re-sent."""
        failures = []
        order = self._order()
        for position, index in enumerate(order):
            # a short read timeout only where another member can take over
            last = position == len(order) - 1
            read_timeout = self.timeout if write or last else min(self.timeout, READ_TIMEOUT)
            try:
                result = self._send(index, path, body, read_timeout)
            except _Unreached as exc:
                self.mark_down(index)
                if write and exc.maybe_sent:
                    raise StoreUnavailable(
                        f"etcd at {self._name(index)} broke off {path} ({exc}); the change "
                        "may or may not have been applied"
                    ) from exc
                failures.append(f"{self._name(index)} ({exc})")
                continue
            except requests.exceptions.ReadTimeout as exc:
                self.mark_down(index)
                if not write:
                    failures.append(f"{self._name(index)} (no answer within {read_timeout} s)")
                    continue
                raise StoreUnavailable(
                    f"etcd at {self._name(index)} did not answer {path} within "
                    f"{read_timeout} s; the change may or may not have been applied"
                ) from exc
            self._preferred = index
            self._down_until.pop(index, None)
            return result
        raise StoreUnavailable(_unreachable(failures))

    def _refused(self, index: int, path: str, message: str) -> NetdError:
        if "lease not found" in message:
            return NotFound("lease not found (expired or revoked); grant a new one")
        if "duplicate key" in message:
            return InvalidInput("one key is written twice (or written and deleted) in one commit")
        if "required revision has been compacted" in message:
            return Compacted(f"etcd: {message}")
        if "future revision" in message:
            return InvalidInput(f"etcd: {message}")
        if "user name is empty" in message or "permission denied" in message:
            message += " (check --store-user/--store-password and the user's permissions)"
        return StoreUnavailable(f"etcd at {self._name(index)} refused {path}: {message}")

    def probe(self, index: int, session: requests.Session) -> int:
        """The revision member `index` itself holds, asked with a short timeout and no
        consensus round (its status): raises if the member does not answer, or knows
        no leader (cut off from its peers, it would deliver no further change)."""
        response = session.post(
            self._url(index, "/maintenance/status"), json={},
            headers=self.headers(index, session),
            timeout=(CONNECT_TIMEOUT, WATCH_PROBE_TIMEOUT),
        )
        if response.status_code != 200:
            raise StoreUnavailable(f"etcd refused a probe: {_error_message(response)}")
        status: dict[str, Any] = response.json()
        if not int(status.get("leader", 0)):
            raise StoreUnavailable("the member knows no leader (cut off from its peers?)")
        return _revision(status)

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
        return _revision(self._post("/kv/put", body, write=True))

    def delete(self, key: str) -> bool:
        response = self._post("/kv/deleterange", {"key": _b64(key)}, write=True)
        return int(response.get("deleted", 0)) > 0

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
        response = self._post(
            "/kv/txn", {"compare": compare, "success": success}, write=True
        )
        return CommitResult(bool(response.get("succeeded", False)), _revision(response))

    def revision(self) -> int:
        """The revision of a member that answers (its status: no key permission needed,
        so a user restricted to netd's prefix may ask)."""
        return _revision(self._post("/maintenance/status", {}))

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
            sessions, self._sessions = self._sessions, []
            self._idle.clear()
        for session in sessions:
            session.close()




def _stream_socket(response: requests.Response) -> socket.socket | None:
    """The socket under a streamed response (http.client's file over a SocketIO)."""
    with contextlib.suppress(AttributeError):
        sock = response.raw._fp.fp.raw._sock
        if isinstance(sock, socket.socket):
            return sock
    return None


class EtcdWatch:
    """One watch stream, read by a thread of its own into a queue that `get` drains.

    A second thread checks liveness: when the stream has been silent for
    WATCH_PROBE_AFTER s, it asks the same member for its revision (serializable, short
    timeout). No answer: the watch is over with StoreUnavailable, the member is tried
    last for a while, and the caller re-lists and watches again. A connection whose
    member restarted or vanished is also ended by the kernel (TCP keepalive)."""

    def __init__(self, store: EtcdStore, prefix: str, start_revision: int) -> None:
        self._store = store
        self._queue: queue.Queue[list[WatchEvent] | NetdError] = queue.Queue()
        self._error: NetdError | None = None
        self._closed = False
        self._over = False
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._index, self._session, self._response = self._open(prefix, start_revision)
        self._endpoint = store._name(self._index)
        self._sock = _stream_socket(self._response)
        if self._sock is not None:
            self._sock.settimeout(None)  # silence is normal; the monitor judges it
        self._heard = time.monotonic()
        log.info("watching %s on etcd at %s from revision %d",
                 prefix, self._endpoint, start_revision)
        self._thread = threading.Thread(
            target=self._read, name=f"etcd-watch {prefix}", daemon=True
        )
        self._monitor_thread = threading.Thread(
            target=self._monitor, name=f"etcd-watch-probe {prefix}", daemon=True
        )
        self._thread.start()
        self._monitor_thread.start()

    def _open(
        self, prefix: str, start_revision: int
    ) -> tuple[int, requests.Session, requests.Response]:
        store = self._store
        body: dict[str, Any] = {"create_request": {
            **_range(prefix), "start_revision": start_revision, "progress_notify": True,
        }}
        failures = []
        order = store._order()
        for index in order:
            session = store.new_session(owned=False)
            wait = store.timeout if index == order[-1] else min(store.timeout, READ_TIMEOUT)
            try:
                response = session.post(
                    store._url(index, "/watch"), json=body, stream=True,
                    headers=store.headers(index, session), timeout=(CONNECT_TIMEOUT, wait),
                )
            except (requests.RequestException, _Unreached) as exc:
                session.close()
                store.mark_down(index)
                reason = exc if isinstance(exc, _Unreached) else _reason(exc)
                failures.append(f"{store._name(index)} ({reason})")
                continue
            except BaseException:
                session.close()
                raise
            if response.status_code != 200:
                session.close()
                message = _error_message(response)
                if "token" in message:
                    store.forget_token(index)
                raise StoreUnavailable(f"etcd at {store._name(index)} refused a watch: {message}")
            return index, session, response
        raise StoreUnavailable(_unreachable(failures))

    def _read(self) -> None:
        buffer = b""
        try:
            for chunk in self._response.iter_content(chunk_size=None):
                self._heard = time.monotonic()
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip() and not self._handle(json.loads(line)):
                        self._end(None)
                        return
            problem = "the stream ended"
        except (requests.RequestException, OSError, ValueError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        self._end(StoreUnavailable(
            f"watch connection to etcd at {self._endpoint} broke ({problem}); "
            "re-list and watch again"
        ))

    def _monitor(self) -> None:
        session = self._store.new_session(owned=False)
        alive = time.monotonic()
        try:
            while not self._done.wait(WATCH_PROBE_AFTER / 4):
                now = time.monotonic()
                if now - max(alive, self._heard) < WATCH_PROBE_AFTER:
                    continue
                try:
                    self._store.probe(self._index, session)
                except (requests.RequestException, _Unreached, NetdError) as exc:
                    if self._done.is_set():
                        return
                    reason = (str(exc) if isinstance(exc, _Unreached | NetdError) else
                              f"no answer to a probe within {WATCH_PROBE_TIMEOUT} s "
                              f"({_reason(exc)})")
                    self._store.mark_down(self._index)
                    self._end(StoreUnavailable(
                        f"watch on etcd at {self._endpoint} presumed dead: {reason}; "
                        "re-list and watch again"
                    ))
                    return
                alive = time.monotonic()
        finally:
            session.close()

    def _end(self, error: NetdError | None) -> None:
        """The watch is over (error None: _handle queued why); wake the reader."""
        with self._lock:
            if self._over:
                return
            self._over = True
            if error is not None and not self._closed:
                self._queue.put(error)
        self._done.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    def _handle(self, message: dict[str, Any]) -> bool:
        """Queue what one stream message says; False once the watch is over."""
        if "error" in message:
            error = message["error"]
            text = error.get("message", error) if isinstance(error, dict) else error
            if "token" in str(text):
                self._store.forget_token(self._index)
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
            if "token" in str(reason):
                self._store.forget_token(self._index)
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
        self._end(None)
        with contextlib.suppress(Exception):
            self._response.close()
        self._session.close()
        self._thread.join(timeout=2)
