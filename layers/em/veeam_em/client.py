"""A client for the parts of EM's REST API the notifier uses, over `requests`.

It logs on with HTTP Basic auth, sends the token in the `X-RestSvcSessionId` header (never
a cookie, so a stale one cannot win over a fresh token), verifies TLS against a CA bundle,
retries transient failures through urllib3's `Retry`, caps response bodies, and turns every
failure into one of the errors in `veeam_em.errors`.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from types import TracebackType
from urllib.parse import quote, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from veeam_em.errors import (
    EmAuthenticationError,
    EmConnectionError,
    EmError,
    EmHttpError,
    EmNotFoundError,
    EmResponseError,
    EmTlsError,
)
from veeam_em.models import CloudFailoverSession, EntityReferences, LogonSession, QueryResult
from veeam_em.parser import (
    parse_entity_references,
    parse_error,
    parse_failover_session,
    parse_logon_session,
    parse_query_result,
)

_logger = logging.getLogger(__name__)
TOKEN_HEADER = "X-RestSvcSessionId"  # noqa: S105 (a header name, not a secret)
SESSION_TYPE = "CloudFailoverSession"
PLAN_TYPE = "CloudFailoverPlan"
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
# A Next chain longer than this is a broken EM (or proxy), not a busy one.
MAX_QUERY_PAGES = 1000
# Statuses a query with a filter may answer when this EM cannot run the query service.
_QUERY_UNSUPPORTED = frozenset({400, 404, 405, 501})


def normalize_base_url(url: str) -> str:
    """Return EM's API root (`https://host:9398/api`) for a URL given with or without `/api`."""
    parts = urlsplit(url.strip())
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"EM URL must be https://host[:port][/path][/api], got {url!r}")

    path = parts.path.rstrip("/")
    if not path.lower().endswith("/api"):
        path = f"{path}/api"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds to wait for a connection and for each read from EM."""

    connect: float = 5.0
    read: float = 30.0


def default_retry(total: int = 3) -> Retry:
    """Bounded retries with exponential backoff and jitter for connection errors and 5xx."""
    return Retry(
        total=total,
        connect=total,
        read=1,
        status=total,
        other=0,  # a certificate that does not verify will not verify on a second try
        backoff_factor=0.3,
        backoff_jitter=0.3,
        backoff_max=5.0,
        status_forcelist=(500, 502, 503, 504),
        allowed_methods=frozenset({"GET", "DELETE"}),
        respect_retry_after_header=True,
        raise_on_status=False,
    )


class EmClient:
    """One EM, one logon at a time. Use it as a context manager to log out when done."""

    def __init__(
        self,
        url: str,
        username: str,
        password: str,
        *,
        ca_bundle: str | None = None,
        timeouts: Timeouts | None = None,
        retry: Retry | None = None,
        pool_size: int = 10,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.base_url = normalize_base_url(url)
        self.host = urlsplit(self.base_url).netloc
        self._credentials = (username, password)
        self._timeouts = timeouts or Timeouts()
        self._max_body_bytes = max_body_bytes
        self._token: str | None = None
        self._logon: LogonSession | None = None
        self._logon_lock = threading.Lock()
        self._pool_size = pool_size

        self._http = requests.Session()
        self._http.verify = ca_bundle if ca_bundle else _system_trust_store()
        self._http.trust_env = False
        self._http.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        self._http.headers.update({"Accept": "application/xml"})
        adapter = HTTPAdapter(
            max_retries=retry or default_retry(), pool_connections=1, pool_maxsize=pool_size
        )
        self._http.mount("https://", adapter)

    def __enter__(self) -> EmClient:
        try:
            self.logon()
        except BaseException:
            self._http.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # A failed logout must not hide what the caller read (or the error it is raising):
        # EM drops an abandoned logon session by itself after 15 idle minutes.
        try:
            self.logout()
        except EmError as error:
            _logger.warning("EM logout failed", extra={"em_host": self.host, "error": str(error)})
        finally:
            self._http.close()

    @property
    def logged_on(self) -> bool:
        """True while this client holds a token."""
        return self._token is not None

    def logon(self) -> LogonSession:
        """Log on (`POST /sessionMngr/?v=latest`) and keep the token for later calls."""
        self._token = None
        url = f"{self.base_url}/sessionMngr/?v=latest"
        response = self._send("POST", url, auth=self._credentials, authenticated=False)
        if response.status_code == 401:
            raise EmAuthenticationError(self.host, "EM refused the user name or password (401)")
        self._raise_for_status("POST", url, response)

        token = response.headers.get(TOKEN_HEADER, "").strip()
        if not token:
            raise EmAuthenticationError(
                self.host, f"logon answered {response.status_code} without a {TOKEN_HEADER}"
            )
        self._logon = parse_logon_session(self._body(response, url), url)
        self._token = token
        return self._logon

    def logout(self) -> None:
        """Log out (`DELETE /logonSessions/{id}`); a no-op when not logged on."""
        if self._token is None or self._logon is None:
            return

        url = f"{self.base_url}/logonSessions/{quote(self._logon.session_id)}"
        try:
            response = self._send("DELETE", url)
            if response.status_code not in (200, 204, 401, 404):
                self._raise_for_status("DELETE", url, response)
        finally:
            self._token = None
            self._logon = None

    def _close_refused_logon(self) -> None:
        try:
            self.logout()
        except EmError as error:
            _logger.info("EM logout of a refused token failed", extra={"error": str(error)})

    def get_failover_session(self, session_id: str) -> CloudFailoverSession:
        """Fetch one session entity by its bare GUID."""
        url = f"{self.base_url}/cloud/failoverSessions/{quote(session_id)}?format=Entity"
        return parse_failover_session(self._get(url), url)

    def list_failover_sessions(self) -> EntityReferences:
        """References to the sessions of the last 30 days (`GET /cloud/failoverSessions`)."""
        url = f"{self.base_url}/cloud/failoverSessions"
        return parse_entity_references(self._get(url), url)

    def query_failover_sessions(
        self, filter_expression: str | None, page_size: int = 100
    ) -> Iterator[QueryResult]:
        """Yield each page of full sessions matching `filter_expression`, following `Next`."""
        return self._query_pages(
            f"type={SESSION_TYPE}&format=Entities&sortAsc=CreationTime",
            filter_expression,
            page_size,
        )

    def query_failover_plans(
        self, page_size: int = 100, *, filter_expression: str | None = None
    ) -> Iterator[QueryResult]:
        """Yield each page of full failover plans (with their tenants), following `Next`."""
        return self._query_pages(f"type={PLAN_TYPE}&format=Entities", filter_expression, page_size)

    def _query_pages(
        self, query: str, filter_expression: str | None, page_size: int
    ) -> Iterator[QueryResult]:
        query += f"&pageSize={page_size}"
        if filter_expression:
            query += f"&filter={quote(filter_expression, safe='')}"
        first_url = f"{self.base_url}/query?{query}&page=1"
        first = parse_query_result(self._get(first_url), first_url)
        yield first

        # Once EM has said how many pages there are, the rest are fetched at once.
        counted = first.paging.pages_count if first.paging and first.paging.next_href else 1
        counted = min(counted, MAX_QUERY_PAGES)
        urls = [f"{self.base_url}/query?{query}&page={number}" for number in range(2, counted + 1)]
        last = first
        if urls:
            with ThreadPoolExecutor(max_workers=min(self._pool_size, len(urls))) as pool:
                for page in pool.map(lambda url: parse_query_result(self._get(url), url), urls):
                    yield page
                    last = page

        # An EM whose pages grew meanwhile (or that never says how many) is followed by its
        # Next links, each page once, up to a limit.
        seen = {first_url, *urls}
        next_href = last.paging.next_href if last.paging else None
        while next_href:
            url = self._same_origin(next_href)
            if url in seen:
                break
            if len(seen) >= MAX_QUERY_PAGES:
                raise EmResponseError(url, f"at most {MAX_QUERY_PAGES} query pages", "more")
            seen.add(url)
            page = parse_query_result(self._get(url), url)
            yield page
            next_href = page.paging.next_href if page.paging else None

    def discover_failover_sessions(
        self, filter_expression: str | None, page_size: int = 100
    ) -> Iterator[QueryResult]:
        """Like `query_failover_sessions`, falling back to the plain collection where this
        EM's query service refuses the query. The fallback fetches each entity by GUID and
        ignores the filter: it returns every session of the last 30 days.
        """
        pages = 0
        try:
            for page in self.query_failover_sessions(filter_expression, page_size):
                pages += 1
                yield page
            return
        except EmHttpError as error:
            if pages or error.status not in _QUERY_UNSUPPORTED:
                raise

        refs = self.list_failover_sessions().refs
        sessions: list[CloudFailoverSession] = []
        rejected: list[Exception] = []
        for ref in refs:
            try:
                sessions.append(self.get_failover_session(ref.id))
            except (EmResponseError, EmHttpError) as error:
                rejected.append(error)
        yield QueryResult(
            sessions=tuple(sessions), refs=refs, paging=None, rejected=tuple(rejected)
        )

    def _same_origin(self, href: str) -> str:
        """Re-root an href EM wrote (perhaps with its own host name) on our base URL, so the
        token is only ever sent to the EM we were configured with.
        """
        parts = urlsplit(href)
        marker = parts.path.lower().find("/api/")
        rest = parts.path[marker + len("/api") :] if marker >= 0 else parts.path
        query = f"?{parts.query}" if parts.query else ""
        return f"{self.base_url}{rest}{query}"

    def _get(self, url: str) -> bytes:
        token = self._token
        response = self._send("GET", url)
        if response.status_code == 401:
            # EM expires idle tokens after 15 minutes: log on again once, retry once. The
            # old logon session is closed first, in case EM refused it for another reason.
            # Of several threads refused the same token, one logs on for all.
            response.close()
            with self._logon_lock:
                if self._token == token:
                    self._close_refused_logon()
                    self.logon()
            response = self._send("GET", url)
            if response.status_code == 401:
                raise EmAuthenticationError(self.host, "EM refused a fresh token (401)")
        self._raise_for_status("GET", url, response)
        return self._body(response, url)

    def _send(
        self,
        method: str,
        url: str,
        *,
        auth: tuple[str, str] | None = None,
        authenticated: bool = True,
    ) -> requests.Response:
        headers = {}
        if authenticated:
            if self._token is None:
                raise EmAuthenticationError(self.host, "not logged on")
            headers[TOKEN_HEADER] = self._token

        try:
            return self._http.request(
                method,
                url,
                headers=headers,
                auth=auth,
                timeout=(self._timeouts.connect, self._timeouts.read),
                stream=True,
                allow_redirects=False,
            )
        except requests.exceptions.SSLError as error:
            raise EmTlsError(self.host, _tls_reason(error)) from error
        except requests.exceptions.RetryError as error:
            raise EmConnectionError(self.host, f"gave up after retries ({error})") from error
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as error:
            raise EmConnectionError(self.host, _connection_reason(error)) from error

    def _body(self, response: requests.Response, url: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(chunk_size=64 * 1024):
                size += len(chunk)
                if size > self._max_body_bytes:
                    raise EmResponseError(
                        url, f"a body of at most {self._max_body_bytes} bytes", "a larger body"
                    )
                chunks.append(chunk)
        except requests.exceptions.RequestException as error:
            raise EmConnectionError(self.host, f"reading the response failed: {error}") from error
        finally:
            response.close()
        return b"".join(chunks)

    def _raise_for_status(self, method: str, url: str, response: requests.Response) -> None:
        if response.status_code < 400 and response.status_code not in (301, 302, 303, 307, 308):
            return

        path = urlsplit(url).path
        message = self._error_message(response, url)
        if response.status_code == 404:
            raise EmNotFoundError(self.host, method, path, 404, message)
        if response.status_code == 401:
            raise EmAuthenticationError(self.host, message)
        raise EmHttpError(self.host, method, path, response.status_code, message)

    def _error_message(self, response: requests.Response, url: str) -> str:
        try:
            body = self._body(response, url)
        except EmError:
            return f"HTTP {response.status_code} with an unreadable body"
        try:
            return self._redact(parse_error(body, url).message) or f"HTTP {response.status_code}"
        except EmResponseError as error:
            kind = response.headers.get("Content-Type", "no content type")
            return f"HTTP {response.status_code} ({kind}, {error.found}, not an EM <Error>)"

    def _redact(self, text: str) -> str:
        """EM's own words, without the token or the password should EM (or a proxy) echo
        them: error messages end up in logs."""
        for secret in (self._token, self._credentials[1]):
            if secret:
                text = text.replace(secret, "***")
        return text


def _system_trust_store() -> str | bool:
    """The operating system's CA file where there is one, else requests' own bundle."""
    paths = ssl.get_default_verify_paths()
    return paths.cafile or True


def _tls_reason(error: BaseException) -> str:
    current: BaseException | None = error
    for _ in range(10):
        if current is None:
            break
        if isinstance(current, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {current.verify_message}"
        nested = next((arg for arg in current.args if isinstance(arg, BaseException)), None)
        current = nested or current.__cause__ or current.__context__
    return str(error)


def _connection_reason(error: BaseException) -> str:
    """The innermost cause in a few words (`[Errno 111] Connection refused`), not urllib3's
    whole chain of wrappers."""
    current: BaseException | None = error
    innermost: BaseException = error
    for _ in range(10):
        if current is None:
            break
        innermost = current
        reason = getattr(current, "reason", None)
        nested = next((arg for arg in current.args if isinstance(arg, BaseException)), None)
        current = reason if isinstance(reason, BaseException) else nested or current.__cause__
    text = str(innermost)
    if ": " in text and innermost is not error:
        text = text.rsplit(": ", 1)[-1] if "Errno" in text else text
    return text if len(text) <= 200 else f"{text[:200]}..."
