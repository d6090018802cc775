"""A loopback HTTPS server that answers like Veeam Backup Enterprise Manager's XML REST API.

It plays a ``Story`` of cloud failover sessions and serves the routes the notifier uses:
logon and logout, the session entity and reference, the session collection and the query
service with EM's filter grammar and paging, for sessions and for the story's failover
plans (with their tenants). The certificate comes from a ``TestPki``, so
clients verify it through the CA bundle instead of switching verification off.

Tests and benchmarks script it through ``inject`` (canned or broken answers per route),
``expire_logon_sessions``, ``latency``, ``request_counts`` and an injectable clock.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import math
import re
import secrets
import socket
import ssl
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Literal, NoReturn, Self, cast
from urllib.parse import parse_qsl, quote, urlsplit

from failover_local.story import ScriptedPlan, SessionState, Story, TaskState
from failover_local.tls import TestPki

_LOG = logging.getLogger(__name__)

EM_NAMESPACE = "http://www.veeam.com/ent/v1.0"
"""The default XML namespace of every EM response."""

DEMO_PASSWORD = "demo-password-not-secret"  # noqa: S105 - loopback simulator only
"""The password the simulator accepts unless told otherwise."""

ROUTES = frozenset({"logon", "logout", "session", "refs", "query", "plans", "unknown"})
"""Route names used by ``inject`` and ``request_counts``; ``plans`` is the query service
asked for ``type=CloudFailoverPlan``, ``query`` the query service asked for anything else."""

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
TOKEN_IDLE_TIMEOUT = timedelta(minutes=15)
COLLECTION_WINDOW = timedelta(days=30)

_XSD_NAMESPACE = "http://www.w3.org/2001/XMLSchema"
_XSI_NAMESPACE = "http://www.w3.org/2001/XMLSchema-instance"
_XML_DECLARATION = b'<?xml version="1.0" encoding="utf-8"?>\n'
_XML_CONTENT_TYPE = "application/xml; charset=utf-8"
_SESSION_ID_HEADER = "X-RestSvcSessionId"
_REALM = "Veeam Backup Enterprise Manager"
_SESSION_URN = "urn:veeam:CloudFailoverSession:"
_PLAN_URN = "urn:veeam:CloudFailoverPlan:"
_TENANT_URN = "urn:veeam:CloudTenant:"
_BACKUP_SERVER_URN = "urn:veeam:BackupServer:"
_GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_SESSION_PATH = re.compile(rf"/api/cloud/failoversessions/(?P<guid>{_GUID})/?", re.IGNORECASE)
_LOGOUT_PATH = re.compile(r"/api/logonsessions/(?P<id>[^/]+)/?", re.IGNORECASE)
_HANDLER_TIMEOUT_SECONDS = 10.0

ET.register_namespace("", EM_NAMESPACE)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class FaultResponse:
    """A canned answer served instead of the normal one (see ``EmSimulator.inject``).

    ``headers`` are sent as given (only ``Content-Length`` is added), so a fault can omit
    or fake the content type. ``delay`` is slept before answering; ``drop_connection``
    closes the connection without any answer.
    """

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop_connection: bool = False

    @classmethod
    def em_error(cls, status: int, message: str) -> FaultResponse:
        """An answer shaped like a real EM ``Error`` with this status and message."""
        return cls(
            status=status,
            body=error_xml(status, message),
            headers={"Content-Type": _XML_CONTENT_TYPE},
        )


@dataclass
class _Logon:
    session_id: str
    user_name: str
    last_used: datetime


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


class EmError(Exception):
    """A request the simulator answers with an EM ``Error`` body."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class EmSimulator:
    """An EM REST API on ``https://127.0.0.1:<free port>/api`` that plays ``story``.

    Use it as a context manager or call ``start()``/``stop()``. Logon takes HTTP Basic
    auth with ``username``/``password``; every other route needs the token from the
    logon's ``X-RestSvcSessionId`` header. ``latency`` seconds are slept before every
    answer; ``clock`` decides what "now" is for the story and token expiry.
    """

    def __init__(
        self,
        story: Story,
        pki: TestPki,
        *,
        username: str = "EM01\\svc-notifier",
        password: str = DEMO_PASSWORD,
        latency: float = 0.0,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.latency = latency
        self._story = story
        self._pki = pki
        self._username = username
        self._password = password
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot_cache: tuple[Story, datetime, list[SessionState]] | None = None
        self._logons: dict[str, _Logon] = {}
        self._faults: dict[str, deque[tuple[str, FaultResponse]]] = {}
        self._counts: Counter[str] = Counter()
        self._server: _EmHttpServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        """Bind a free loopback port and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("EM simulator already started")

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._pki.certificate, self._pki.private_key)

        server = _EmHttpServer(("127.0.0.1", 0), _EmRequestHandler, self, context)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"em-simulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        _LOG.info("EM simulator started", extra={"em_url": self.url})

    def stop(self) -> None:
        """Stop serving and close the port and any open connections. Safe to call twice."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return

        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join(timeout=5)

        self._server = None
        self._thread = None
        _LOG.info("EM simulator stopped")

    @property
    def port(self) -> int:
        """The TCP port the simulator listens on (only while started)."""
        return self._require_server().server_address[1]

    @property
    def host(self) -> str:
        """The loopback address the simulator listens on."""
        return "127.0.0.1"

    @property
    def url(self) -> str:
        """The base URL without ``/api``, e.g. ``https://127.0.0.1:50123``."""
        return f"https://{self.host}:{self.port}"

    @property
    def ca_bundle(self) -> Path:
        """The PEM file a client must trust to verify the simulator's certificate."""
        return self._pki.ca_bundle

    @property
    def story(self) -> Story:
        """The story being played; assign a new one to change it while running."""
        with self._lock:
            return self._story

    @story.setter
    def story(self, story: Story) -> None:
        with self._lock:
            self._story = story

    @property
    def request_counts(self) -> Counter[str]:
        """A copy of how many requests each route (see ``ROUTES``) has received."""
        with self._lock:
            return Counter(self._counts)

    @property
    def open_logon_sessions(self) -> int:
        """Tokens issued and neither logged out nor expired."""
        with self._lock:
            return len(self._logons)

    def inject(
        self, route: str, response: FaultResponse, times: int = 1, *, path_contains: str = ""
    ) -> None:
        """Serve ``response`` for the next ``times`` requests to ``route`` (only those whose
        path contains ``path_contains``, e.g. one session's GUID, when given).

        Injected answers queue up first-in first-out per route and come before any
        normal handling, authentication included.
        """
        if route not in ROUTES:
            raise ValueError(f"unknown route {route!r}; expected one of {sorted(ROUTES)}")
        if times < 1:
            raise ValueError("times must be at least 1")

        with self._lock:
            queue = self._faults.setdefault(route, deque())
            queue.extend([(path_contains.lower(), response)] * times)

    def clear_faults(self) -> None:
        """Forget every injected answer not served yet."""
        with self._lock:
            self._faults.clear()

    def expire_logon_sessions(self) -> None:
        """Expire every token now, as 15 idle minutes would; later calls answer 401."""
        with self._lock:
            self._logons.clear()

    def _require_server(self) -> _EmHttpServer:
        if self._server is None:
            raise RuntimeError("EM simulator not started")
        return self._server

    def _count_and_take_fault(self, route: str, path: str = "") -> FaultResponse | None:
        with self._lock:
            self._counts[route] += 1
            queue = self._faults.get(route)
            for index, (wanted, response) in enumerate(queue or ()):
                if wanted in path.lower():
                    del queue[index]  # type: ignore[union-attr]
                    return response
            return None

    def _answer(self, request: _Request) -> _Answer:
        try:
            if request.route == "logon":
                return self._logon(request)

            self._authenticate(request)

            if request.route == "logout":
                return self._logout(request)
            routes = {
                "session": self._session,
                "refs": self._collection,
                "plans": self._plan_query,
            }
            return routes.get(request.route, self._query)(request)
        except EmError as error:
            return _Answer(
                error.status,
                error_xml(error.status, error.message),
                {"Content-Type": _XML_CONTENT_TYPE, **error.headers},
            )

    def _logon(self, request: _Request) -> _Answer:
        user = self._check_basic_auth(request.headers.get("authorization", ""))

        session_id = str(uuid.uuid4())
        token = base64.b64encode(secrets.token_bytes(48)).decode("ascii")
        with self._lock:
            self._logons[token] = _Logon(session_id, user, self._clock())

        body = _logon_session_xml(self._api_url, user, session_id)
        return _Answer(
            201,
            body,
            {
                "Content-Type": _XML_CONTENT_TYPE,
                _SESSION_ID_HEADER: token,
                "Set-Cookie": f"{_SESSION_ID_HEADER}={token}; Path=/; Secure; HttpOnly",
                "Location": f"{self._api_url}/logonSessions/{session_id}",
            },
        )

    def _check_basic_auth(self, header: str) -> str:
        challenge = {"WWW-Authenticate": f'Basic realm="{_REALM}"'}
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded.strip():
            raise EmError(401, "Authentication required.", challenge)

        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as error:
            raise EmError(401, "Malformed Basic credentials.", challenge) from error

        user, _, password = decoded.partition(":")
        user_ok = hmac.compare_digest(user.casefold(), self._username.casefold())
        password_ok = hmac.compare_digest(password.encode(), self._password.encode())
        if not (user_ok and password_ok):
            raise EmError(401, "Invalid user name or password.", challenge)
        return self._username

    def _authenticate(self, request: _Request) -> None:
        token = request.cookie_token or request.headers.get(_SESSION_ID_HEADER.lower(), "")
        if not token:
            raise EmError(401, "Logon session is not specified.")

        now = self._clock()
        with self._lock:
            logon = self._logons.get(token)
            if logon is not None and now - logon.last_used > TOKEN_IDLE_TIMEOUT:
                del self._logons[token]
                logon = None
            if logon is None:
                raise EmError(401, "Logon session is invalid or has expired.")
            logon.last_used = now
            request.token = token

    def _logout(self, request: _Request) -> _Answer:
        with self._lock:
            owner = next(
                (t for t, logon in self._logons.items() if logon.session_id == request.param),
                None,
            )
            if owner is None:
                raise EmError(404, f"Logon session {request.param} not found.")
            del self._logons[owner]
        return _Answer(204)

    def _session(self, request: _Request) -> _Answer:
        guid = request.param.lower()
        state = next((s for s in self._snapshot() if s.guid.lower() == guid), None)
        if state is None:
            raise EmError(404, f"Cloud failover session {guid} not found.")

        if request.query.get("format", "").lower() == "entity":
            root = _session_entity(self._api_url, state)
        else:
            root = _session_ref(self._api_url, state, "EntityRef")
        return _xml_answer(root)

    def _collection(self, request: _Request) -> _Answer:
        window_start = self._clock() - COLLECTION_WINDOW
        states = [s for s in self._snapshot() if s.created_at >= window_start]
        states.sort(key=lambda s: s.created_at, reverse=True)

        if request.query.get("format", "").lower() == "entity":
            root = _element("CloudFailoverSessions")
            root.extend(_session_entity(self._api_url, s) for s in states)
        else:
            root = _element("EntityReferences")
            root.extend(_session_ref(self._api_url, s, "Ref") for s in states)
        return _xml_answer(root)

    def _query(self, request: _Request) -> _Answer:
        query = request.query
        object_type = query.get("type", "")
        if object_type.lower() != "cloudfailoversession":
            raise EmError(400, f"Query type {object_type!r} is not supported.")

        output = query.get("format", "Refs").lower()
        if output not in ("entities", "refs"):
            raise EmError(400, f"Query format {query['format']!r} is not supported.")

        page_size, page = _paging_parameters(query)
        matches = _sorted(_filtered(self._snapshot(), query.get("filter", "")), query)

        pages = max(1, math.ceil(len(matches) / page_size))
        shown = matches[(page - 1) * page_size : page * page_size]
        root = _element("QueryResult")
        if output == "entities":
            wrapper = _child(_child(root, "Entities"), "CloudFailoverSessions")
            wrapper.extend(_session_entity(self._api_url, s) for s in shown)
        else:
            wrapper = _child(root, "Refs")
            wrapper.extend(_session_ref(self._api_url, s, "Ref") for s in shown)

        root.append(_paging_info(self._api_url, query, page, pages, page_size))
        return _xml_answer(root)

    def _plan_query(self, request: _Request) -> _Answer:
        query = request.query
        output = query.get("format", "Refs").lower()
        if output not in ("entities", "refs"):
            raise EmError(400, f"Query format {query['format']!r} is not supported.")

        page_size, page = _paging_parameters(query)
        plans = self.story.plans
        text = query.get("filter", "")
        if text.strip():
            condition = _FilterParser(text, _PLAN_FIELDS, _PLAN_ENUMS).parse()
            plans = tuple(plan for plan in plans if condition.matches(plan))
        matches = sorted(plans, key=lambda plan: (plan.name.casefold(), plan.guid))

        pages = max(1, math.ceil(len(matches) / page_size))
        shown = matches[(page - 1) * page_size : page * page_size]
        root = _element("QueryResult")
        if output == "entities":
            wrapper = _child(_child(root, "Entities"), "CloudFailoverPlans")
            wrapper.extend(_plan_entity(self._api_url, plan) for plan in shown)
        else:
            wrapper = _child(root, "Refs")
            wrapper.extend(_plan_ref(self._api_url, plan) for plan in shown)

        root.append(_paging_info(self._api_url, query, page, pages, page_size))
        return _xml_answer(root)

    def _snapshot(self) -> list[SessionState]:
        # A frozen clock (tests, the benchmark) asks the same question many times; a
        # real EM does not pay for its whole history on every request either.
        now, story = self._clock(), self.story
        with self._lock:
            cached = self._snapshot_cache
            if cached is not None and cached[0] is story and cached[1] == now:
                return cached[2]
        snapshot = story.snapshot(now)
        with self._lock:
            self._snapshot_cache = (story, now, snapshot)
        return snapshot

    @property
    def _api_url(self) -> str:
        return f"{self.url}/api"


@dataclass
class _Request:
    method: str
    route: str
    param: str
    query: dict[str, str]
    headers: dict[str, str]
    cookie_token: str
    token: str = ""


class _EmHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        simulator: EmSimulator,
        context: ssl.SSLContext,
    ) -> None:
        super().__init__(address, handler)
        self.simulator = simulator
        self._context = context
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, Any]:
        # The handshake runs in the handler thread, so a slow client cannot block accept().
        raw, address = self.socket.accept()
        connection = self._context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        with self._connections_lock:
            self._connections.add(connection)
        return connection, address

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake handler threads idling on keep-alive connections so they end."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                _LOG.debug("EM simulator connection already closed")

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Failed handshakes (an untrusting client) are expected: keep them off stderr.
        _LOG.debug("EM simulator connection error", exc_info=True)


class _EmRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-HTTPAPI/2.0"
    sys_version = ""
    timeout = _HANDLER_TIMEOUT_SECONDS
    disable_nagle_algorithm = True
    _METHODS: ClassVar[dict[str, frozenset[str]]] = {
        "logon": frozenset({"POST"}),
        "logout": frozenset({"DELETE"}),
        "session": frozenset({"GET"}),
        "refs": frozenset({"GET"}),
        "query": frozenset({"GET"}),
        "plans": frozenset({"GET"}),
    }

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        cast(ssl.SSLSocket, self.connection).do_handshake()

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:
        _LOG.debug("EM simulator request %s", format % args)

    def _dispatch(self) -> None:
        simulator = cast(_EmHttpServer, self.server).simulator
        self._discard_body()
        request = self._parse_request()

        fault = simulator._count_and_take_fault(request.route, self.path)
        time.sleep(simulator.latency)

        if fault is not None:
            self._serve_fault(fault)
            return

        allowed = self._METHODS.get(request.route)
        if allowed is None:
            message = f"Resource {urlsplit(self.path).path} not found."
            self._send(_error_answer(404, message))
        elif request.method not in allowed:
            headers = {"Allow": ", ".join(sorted(allowed))}
            message = f"Method {request.method} is not allowed here."
            self._send(_error_answer(405, message, headers))
        else:
            self._send(simulator._answer(request))

    def _parse_request(self) -> _Request:
        parts = urlsplit(self.path)
        route, param = _route(parts.path)
        query = {k.lower(): v for k, v in parse_qsl(parts.query, keep_blank_values=True)}
        if route == "query" and query.get("type", "").lower() == "cloudfailoverplan":
            route = "plans"
        headers = {k.lower(): v for k, v in self.headers.items()}
        return _Request(
            method=self.command,
            route=route,
            param=param,
            query=query,
            headers=headers,
            cookie_token=_cookie(headers.get("cookie", ""), _SESSION_ID_HEADER),
        )

    def _discard_body(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > 0:
            self.rfile.read(length)

    def _serve_fault(self, fault: FaultResponse) -> None:
        time.sleep(fault.delay)
        if fault.drop_connection:
            self.close_connection = True
            return
        self._send(_Answer(fault.status, fault.body, fault.headers))

    def _send(self, answer: _Answer) -> None:
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if "content-length" not in {name.lower() for name in answer.headers}:
            self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()

        if self.command != "HEAD" and answer.body:
            self.wfile.write(answer.body)


def _route(path: str) -> tuple[str, str]:
    lowered = path.lower()
    if lowered.rstrip("/") == "/api/sessionmngr":
        return "logon", ""
    if lowered.rstrip("/") == "/api/cloud/failoversessions":
        return "refs", ""
    if lowered.rstrip("/") == "/api/query":
        return "query", ""

    session = _SESSION_PATH.fullmatch(path)
    if session is not None:
        return "session", session["guid"]

    logout = _LOGOUT_PATH.fullmatch(path)
    if logout is not None:
        return "logout", logout["id"]
    return "unknown", ""


def _paging_parameters(query: Mapping[str, str]) -> tuple[int, int]:
    page_size = min(_positive_int(query, "pagesize", DEFAULT_PAGE_SIZE), MAX_PAGE_SIZE)
    return page_size, _positive_int(query, "page", 1)


def _cookie(header: str, name: str) -> str:
    for pair in header.split(";"):
        key, _, value = pair.strip().partition("=")
        if key == name:
            return value.strip().strip('"')
    return ""


def _positive_int(query: Mapping[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise EmError(400, f"Parameter {name} must be an integer, got {raw!r}.") from None
    if value < 1:
        raise EmError(400, f"Parameter {name} must be at least 1, got {value}.")
    return value


# --- XML -------------------------------------------------------------------------------


def error_xml(status: int, message: str) -> bytes:
    """The body EM sends with an error status: an ``Error`` element with its declaration."""
    root = _element("Error", Message=message, StatusCode=str(status))
    return _serialize(root)


def _error_answer(status: int, message: str, headers: Mapping[str, str] | None = None) -> _Answer:
    all_headers = {"Content-Type": _XML_CONTENT_TYPE, **(headers or {})}
    return _Answer(status, error_xml(status, message), all_headers)


def _xml_answer(root: ET.Element) -> _Answer:
    return _Answer(200, _serialize(root), {"Content-Type": _XML_CONTENT_TYPE})


def _serialize(root: ET.Element) -> bytes:
    # Real EM roots also declare xsd/xsi; ElementTree only declares namespaces it uses.
    root.set("xmlns:xsd", _XSD_NAMESPACE)
    root.set("xmlns:xsi", _XSI_NAMESPACE)
    ET.indent(root, space="  ")
    return _XML_DECLARATION + ET.tostring(root, encoding="unicode").encode("utf-8")


def _element(tag: str, **attributes: str) -> ET.Element:
    return ET.Element(f"{{{EM_NAMESPACE}}}{tag}", attributes)


def _child(parent: ET.Element, tag: str, text: str | None = None, **attributes: str) -> ET.Element:
    child = ET.SubElement(parent, f"{{{EM_NAMESPACE}}}{tag}", attributes)
    child.text = text
    return child


def _timestamp(moment: datetime) -> str:
    # Like .NET's round-trip format: trailing zeros of the fraction are dropped.
    base = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    return f"{base}.{fraction}Z" if fraction else f"{base}Z"


def _logon_session_xml(api: str, user: str, session_id: str) -> bytes:
    href = f"{api}/logonSessions/{session_id}"
    root = _element("LogonSession", Href=href, Type="LogonSession")
    links = _child(root, "Links")
    _child(links, "Link", Rel="Up", Type="EnterpriseManager", Href=f"{api}/")
    for link_type, path in (
        ("BackupServerReferenceList", "backupServers"),
        ("JobReferenceList", "jobs"),
        ("QueryService", "querySvc"),
        ("LookupService", "lookupSvc"),
        ("CloudConnectService", "cloud"),
    ):
        _child(links, "Link", Rel="Down", Type=link_type, Href=f"{api}/{path}")
    _child(links, "Link", Rel="Delete", Href=href)

    _child(root, "UserName", user)
    _child(root, "SessionId", session_id)
    return _serialize(root)


def _session_links(parent: ET.Element, api: str, state: SessionState, entity: bool) -> None:
    href = f"{api}/cloud/failoverSessions/{state.guid}"
    links = _child(parent, "Links")
    _child(
        links,
        "Link",
        Rel="Up",
        Type="BackupServerReference",
        Href=f"{api}/backupServers/{state.backup_server_id}",
        Name=state.backup_server_name,
    )
    _child(
        links,
        "Link",
        Rel="Alternate",
        Type="CloudFailoverSessionReference" if entity else "CloudFailoverSession",
        Href=href if entity else f"{href}?format=Entity",
        Name=state.name,
    )


def _session_ref(api: str, state: SessionState, tag: Literal["EntityRef", "Ref"]) -> ET.Element:
    root = _element(
        tag,
        Type="CloudFailoverSessionReference",
        Href=f"{api}/cloud/failoverSessions/{state.guid}",
        Name=state.name,
        UID=f"{_SESSION_URN}{state.guid}",
    )
    _session_links(root, api, state, entity=False)
    return root


def _session_entity(api: str, state: SessionState) -> ET.Element:
    root = _element(
        "CloudFailoverSession",
        Type="CloudFailoverSession",
        Href=f"{api}/cloud/failoverSessions/{state.guid}?format=Entity",
        Name=state.name,
        UID=f"{_SESSION_URN}{state.guid}",
    )
    _session_links(root, api, state, entity=True)

    _child(root, "JobType", "FailoverPlan")
    _child(root, "CreationTimeUTC", _timestamp(state.created_at))
    if state.ended_at is not None:
        _child(root, "EndTimeUTC", _timestamp(state.ended_at))
    _child(root, "State", state.state)
    _child(root, "Result", state.result)
    _child(root, "Progress", str(state.progress))
    if state.failure_message:
        _child(root, "FailureMessage", state.failure_message)

    tasks = _child(root, "CloudFailoverTasks")
    for task in state.tasks:
        _task_element(tasks, api, task)
    return root


def _task_element(parent: ET.Element, api: str, task: TaskState) -> None:
    item = _child(parent, "CloudFailoverTasks", VmName=task.vm_name)
    _child(
        item,
        "VmReplicaPointLink",
        Rel="Related",
        Type="CloudVmReplicaPointReference",
        Href=f"{api}/cloud/vmReplicaPoints/{task.replica_point_id}",
        Name=task.replica_point_name,
    )
    _child(item, "CreationTimeUTC", _timestamp(task.created_at))
    if task.ended_at is not None:
        _child(item, "EndTimeUTC", _timestamp(task.ended_at))
    _child(item, "State", task.state)
    _child(item, "Result", task.result)
    _child(item, "Progress", str(task.progress))
    if task.failure_message:
        _child(item, "FailureMessage", task.failure_message)


def _plan_ref(api: str, plan: ScriptedPlan) -> ET.Element:
    return _element(
        "Ref",
        Type="CloudFailoverPlanReference",
        Href=f"{api}/cloud/cloudFailoverPlans/{plan.guid}",
        Name=plan.name,
        UID=f"{_PLAN_URN}{plan.guid}",
    )


def _plan_entity(api: str, plan: ScriptedPlan) -> ET.Element:
    href = f"{api}/cloud/cloudFailoverPlans/{plan.guid}"
    root = _element(
        "CloudFailoverPlan",
        Type="CloudFailoverPlan",
        Href=f"{href}?format=Entity",
        Name=plan.name,
        UID=f"{_PLAN_URN}{plan.guid}",
    )
    links = _child(root, "Links")
    _child(links, "Link", Rel="Alternate", Type="CloudFailoverPlanReference", Href=href)
    _child(root, "TenantUid", f"{_TENANT_URN}{plan.tenant_id}")
    _child(root, "TenantName", plan.tenant_name)
    return root


def _paging_info(
    api: str, query: Mapping[str, str], page: int, pages: int, page_size: int
) -> ET.Element:
    info = _element("PagingInfo", PagesCount=str(pages), PageSize=str(page_size), PageNum=str(page))
    links = _child(info, "Links")
    _child(links, "Link", Rel="First", Href=_page_href(api, query, page_size, 1))
    if page < pages:
        _child(links, "Link", Rel="Next", Href=_page_href(api, query, page_size, page + 1))
    _child(links, "Link", Rel="Last", Href=_page_href(api, query, page_size, pages))
    return info


def _page_href(api: str, query: Mapping[str, str], page_size: int, page: int) -> str:
    object_type = query.get("type") or "CloudFailoverSession"
    parameters = [("type", object_type), ("format", query.get("format", "Refs"))]
    parameters += [(k, query[k]) for k in ("sortasc", "sortdesc", "filter") if query.get(k)]
    parameters += [("pageSize", str(page_size)), ("page", str(page))]
    names = {"sortasc": "sortAsc", "sortdesc": "sortDesc"}
    return f"{api}/query?" + "&".join(
        f"{names.get(k, k)}={quote(v, safe='=,:')}" for k, v in parameters
    )


# --- Sorting ---------------------------------------------------------------------------


_SORT_KEYS: dict[str, Callable[[SessionState], Any]] = {
    "creationtime": lambda s: s.created_at,
    "endtime": lambda s: s.ended_at,
    "name": lambda s: s.name.casefold(),
}


def _sorted(states: list[SessionState], query: Mapping[str, str]) -> list[SessionState]:
    ascending = "sortasc" in query and "sortdesc" not in query
    field_name = query.get("sortasc" if ascending else "sortdesc") or "CreationTime"
    key = _SORT_KEYS.get(field_name.lower())
    if key is None:
        raise EmError(400, f"Cannot sort by {field_name!r}.")

    # Sessions without a value (no EndTime yet) go last in either direction.
    present = [s for s in states if key(s) is not None]
    missing = [s for s in states if key(s) is None]
    present.sort(key=lambda s: s.guid)
    present.sort(key=key, reverse=not ascending)
    return present + sorted(missing, key=lambda s: s.guid)


# --- Filter ----------------------------------------------------------------------------


_FilterValue = str | datetime | None
_OPERATORS = ("==", "!=", ">=", "<=", ">", "<")
_DATE_FIELDS = frozenset({"creationtime", "endtime"})
_ENUMS: dict[str, frozenset[str]] = {
    "state": frozenset(
        {"starting", "working", "stopping", "stopped", "pausing", "resuming", "idle"}
    ),
    "result": frozenset({"none", "success", "warning", "failed"}),
    "type": frozenset({"cloudfailoversession"}),
}
_FIELD_VALUES: dict[str, Callable[[SessionState], _FilterValue]] = {
    "uid": lambda s: f"{_SESSION_URN}{s.guid}",
    "name": lambda s: s.name,
    "type": lambda s: "CloudFailoverSession",
    "creationtime": lambda s: s.created_at,
    "endtime": lambda s: s.ended_at,
    "state": lambda s: s.state,
    "result": lambda s: s.result,
    "failuremessage": lambda s: s.failure_message,
    "backupservername": lambda s: s.backup_server_name,
    "backupserveruid": lambda s: f"{_BACKUP_SERVER_URN}{s.backup_server_id}",
}
_DATE_VALUE = re.compile(
    r"(?P<base>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(?P<fraction>\d{1,7}))?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?",
    re.IGNORECASE,
)


_PLAN_FIELDS: dict[str, Callable[[ScriptedPlan], _FilterValue]] = {
    "uid": lambda p: f"{_PLAN_URN}{p.guid}",
    "name": lambda p: p.name,
    "type": lambda p: "CloudFailoverPlan",
    "tenantuid": lambda p: f"{_TENANT_URN}{p.tenant_id}",
    "tenantname": lambda p: p.tenant_name,
}
_PLAN_ENUMS: dict[str, frozenset[str]] = {"type": frozenset({"cloudfailoverplan"})}


@dataclass(frozen=True)
class _Comparison:
    value_of: Callable[[Any], _FilterValue]
    operator: str
    value: _FilterValue

    def matches(self, state: Any) -> bool:
        actual = self.value_of(state)
        if actual is None:
            return False  # like SQL NULL: a running session has no EndTime to compare
        if isinstance(actual, str) and isinstance(self.value, str):
            return _compare(actual.casefold(), self.operator, self.value.casefold())
        return _compare(actual, self.operator, self.value)


@dataclass(frozen=True)
class _AnyOf:
    terms: tuple[_Filter, ...]

    def matches(self, state: Any) -> bool:
        return any(term.matches(state) for term in self.terms)


@dataclass(frozen=True)
class _AllOf:
    terms: tuple[_Filter, ...]

    def matches(self, state: Any) -> bool:
        return all(term.matches(state) for term in self.terms)


_Filter = _Comparison | _AnyOf | _AllOf


def _compare(actual: Any, operator: str, expected: Any) -> bool:
    outcomes: dict[str, Callable[[], bool]] = {
        "==": lambda: bool(actual == expected),
        "!=": lambda: bool(actual != expected),
        ">=": lambda: bool(actual >= expected),
        "<=": lambda: bool(actual <= expected),
        ">": lambda: bool(actual > expected),
        "<": lambda: bool(actual < expected),
    }
    return outcomes[operator]()


def _filtered(states: Iterable[SessionState], text: str) -> list[SessionState]:
    if not text.strip():
        return list(states)
    condition = _FilterParser(text).parse()
    return [s for s in states if condition.matches(s)]


class _FilterParser:
    """Recursive descent over EM's filter grammar.

    ``filter := all ("," all)*``, ``all := term (";" term)*``,
    ``term := "(" filter ")" | field operator value``; ``;`` (AND) binds tighter than
    ``,`` (OR). Values are bare up to the next ``;``, ``,`` or ``)``, or double-quoted.
    """

    def __init__(
        self,
        text: str,
        fields: Mapping[str, Callable[[Any], _FilterValue]] = _FIELD_VALUES,
        enums: Mapping[str, frozenset[str]] = _ENUMS,
    ) -> None:
        self._text = text
        self._fields = fields
        self._enums = enums
        self._position = 0

    def parse(self) -> _Filter:
        result = self._any_of()
        self._skip_spaces()
        if self._position < len(self._text):
            self._fail(f"unexpected {self._text[self._position]!r}")
        return result

    def _any_of(self) -> _Filter:
        terms = [self._all_of()]
        while self._accept(","):
            terms.append(self._all_of())
        return terms[0] if len(terms) == 1 else _AnyOf(tuple(terms))

    def _all_of(self) -> _Filter:
        terms = [self._term()]
        while self._accept(";"):
            terms.append(self._term())
        return terms[0] if len(terms) == 1 else _AllOf(tuple(terms))

    def _term(self) -> _Filter:
        if self._accept("("):
            inner = self._any_of()
            if not self._accept(")"):
                self._fail("missing ')'")
            return inner
        return self._comparison()

    def _comparison(self) -> _Comparison:
        self._skip_spaces()
        match = re.compile(r"[A-Za-z]+").match(self._text, self._position)
        if match is None:
            self._fail("expected a field name")
        name = match.group().lower()
        if name not in self._fields:
            self._fail(f"unknown field {match.group()!r}")
        self._position = match.end()

        self._skip_spaces()
        operator = next((op for op in _OPERATORS if self._text.startswith(op, self._position)), "")
        if not operator:
            self._fail(f"expected an operator after {match.group()!r}")
        self._position += len(operator)

        raw = self._value()
        return _Comparison(self._fields[name], operator, self._typed(name, operator, raw))

    def _value(self) -> str:
        self._skip_spaces()
        if self._accept('"', skip_spaces=False):
            end = self._text.find('"', self._position)
            if end < 0:
                self._fail("unterminated quoted value")
            value = self._text[self._position : end]
            self._position = end + 1
            return value

        start = self._position
        while self._position < len(self._text) and self._text[self._position] not in ";,()":
            self._position += 1
        value = self._text[start : self._position].strip()
        if not value:
            self._fail("expected a value")
        return value

    def _typed(self, name: str, operator: str, raw: str) -> _FilterValue:
        if name in _DATE_FIELDS:
            return self._date(raw)

        if operator not in ("==", "!="):
            self._fail(f"operator {operator} needs a date field, not {name!r}")
        allowed = self._enums.get(name)
        if allowed is not None and raw.lower() not in allowed:
            self._fail(f"unknown {name} value {raw!r}")
        return raw

    def _date(self, raw: str) -> datetime:
        match = _DATE_VALUE.fullmatch(raw)
        if match is None:
            self._fail(f"invalid date {raw!r}")

        fraction = (match["fraction"] or "")[:6].ljust(6, "0")
        zone = match["zone"] or "Z"
        text = f"{match['base']}.{fraction}{'+00:00' if zone.upper() == 'Z' else zone}"
        try:
            return datetime.fromisoformat(text).astimezone(UTC)
        except ValueError:
            self._fail(f"invalid date {raw!r}")

    def _accept(self, symbol: str, *, skip_spaces: bool = True) -> bool:
        if skip_spaces:
            self._skip_spaces()
        if self._text.startswith(symbol, self._position):
            self._position += len(symbol)
            return True
        return False

    def _skip_spaces(self) -> None:
        while self._position < len(self._text) and self._text[self._position].isspace():
            self._position += 1

    def _fail(self, problem: str) -> NoReturn:
        raise EmError(400, f"Invalid filter at position {self._position + 1}: {problem}.")
