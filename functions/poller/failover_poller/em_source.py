"""EM adapter: one logon per poll, the watched or discovered sessions, then logout.

Errors that stop the whole poll (TLS, connection, authentication, a refused query) are
raised as `veeam_em.errors.EmError`; errors that concern one session (it is gone, its body
does not parse) come back beside the sessions that did arrive, so one bad session never
stops the others.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache

from failover_poller.plans import PlanDirectory
from veeam_em.client import EmClient, Timeouts
from veeam_em.errors import (
    EmAuthenticationError,
    EmError,
    EmHttpError,
    EmNotFoundError,
    EmResponseError,
)
from veeam_em.models import CloudFailoverSession


@dataclass(frozen=True, slots=True)
class Credentials:
    """An EM account. `repr` never shows the password."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=***)"


# Watched sessions fetched at once; the EM client keeps this many connections (requests'
# default pool size).
NAMED_CONCURRENCY = 10


class CredentialsError(EmError):
    """The EM credentials could not be read from where the configuration says they are."""


@dataclass(frozen=True, slots=True)
class SessionProblem:
    """A session that could not be read in this poll, and why."""

    session_id: str | None
    error: EmError
    gone: bool = False


@dataclass(frozen=True, slots=True)
class Fetched:
    """What one poll read from EM."""

    sessions: tuple[CloudFailoverSession, ...]
    problems: tuple[SessionProblem, ...]


def discovery_filter(since: datetime) -> str:
    """Sessions still running, plus those that ended at or after `since`."""
    moment = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f'State!=Stopped,EndTime>="{moment}"'


@cache
def ca_bundle_file(value: str | None) -> str | None:
    """A CA bundle given as PEM text is written once to a private file of this process; a
    path is used as it is.
    """
    if value is None or "-----BEGIN" not in value:
        return value
    handle, path = tempfile.mkstemp(prefix="em-ca-", suffix=".pem")
    with os.fdopen(handle, "w", encoding="ascii") as file:
        file.write(value)
    return path


class EmSessionSource:
    """Reads cloud failover sessions from one EM."""

    def __init__(
        self,
        url: str,
        credentials: Callable[[bool], Credentials],
        *,
        ca_bundle: str | None,
        timeouts: Timeouts,
        page_size: int,
        plans: PlanDirectory | None = None,
        client_factory: Callable[..., EmClient] = EmClient,
    ) -> None:
        self._plans = plans
        self.url = url
        self._credentials = credentials
        self._ca_bundle = ca_bundle_file(ca_bundle)
        self._timeouts = timeouts
        self._page_size = page_size
        self._client_factory = client_factory

    def fetch(
        self,
        watched_ids: tuple[str, ...],
        since: datetime,
        on_sessions: Callable[[Sequence[CloudFailoverSession]], None] | None = None,
    ) -> Fetched:
        """The watched sessions, or (with none watched) those discovery finds since `since`.

        After an authentication failure the secret is read afresh; only if it changed (a
        rotated password) is the logon tried once more, so a wrong password costs EM's
        account one refused logon per poll, not two.
        """
        credentials = self._credentials(False)
        try:
            return self._fetch(credentials, watched_ids, since, on_sessions)
        except EmAuthenticationError:
            fresh = self._credentials(True)
            if fresh == credentials:
                raise
            return self._fetch(fresh, watched_ids, since, on_sessions)

    def _fetch(
        self,
        credentials: Credentials,
        watched_ids: tuple[str, ...],
        since: datetime,
        on_sessions: Callable[[Sequence[CloudFailoverSession]], None] | None,
    ) -> Fetched:
        client = self._client_factory(
            self.url,
            credentials.username,
            credentials.password,
            ca_bundle=self._ca_bundle,
            timeouts=self._timeouts,
        )
        with client:
            if self._plans is not None:
                # Tenants come from the failover plans, read in bulk now and then.
                self._plans.refresh_if_due(client)
            if watched_ids:
                return self._fetch_named(client, watched_ids)
            return self._discover(client, since, on_sessions)

    @staticmethod
    def _fetch_named(client: EmClient, watched_ids: tuple[str, ...]) -> Fetched:
        """Fetch the watched sessions concurrently, as many at once as the client has
        connections."""

        def fetch_one(session_id: str) -> CloudFailoverSession | SessionProblem:
            try:
                return client.get_failover_session(session_id)
            except EmNotFoundError as error:
                return SessionProblem(session_id, error, gone=True)
            except (EmResponseError, EmHttpError) as error:
                # One session's bad answer spoils that session only; connection, TLS and
                # authentication failures still end the poll.
                return SessionProblem(session_id, error)

        with ThreadPoolExecutor(max_workers=min(NAMED_CONCURRENCY, len(watched_ids))) as pool:
            outcomes = list(pool.map(fetch_one, watched_ids))
        return Fetched(
            tuple(o for o in outcomes if isinstance(o, CloudFailoverSession)),
            tuple(o for o in outcomes if isinstance(o, SessionProblem)),
        )

    def _discover(
        self,
        client: EmClient,
        since: datetime,
        on_sessions: Callable[[Sequence[CloudFailoverSession]], None] | None,
    ) -> Fetched:
        sessions: dict[str, CloudFailoverSession] = {}
        problems: list[SessionProblem] = []
        for page in client.discover_failover_sessions(discovery_filter(since), self._page_size):
            sessions.update((session.id, session) for session in page.sessions)
            if on_sessions is not None and page.sessions:
                on_sessions(page.sessions)
            problems += [
                SessionProblem(getattr(error, "session_id", None), error)
                for error in page.rejected
                if isinstance(error, EmError)
            ]
        return Fetched(tuple(sessions.values()), tuple(problems))
