"""What a change of a session's state means, and who is told.

A poll reads the sessions from EM, compares each with its stored state and, for a
transition into a terminal state, claims it with a conditional write and hands the
rendered notification to every channel. Claimed notifications wait in the outbox until
every channel has taken them; later polls retry what is still waiting.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from aws_lambda_powertools import Logger

from failover_poller.channels import Channel, PublishError
from failover_poller.em_source import CredentialsError, Fetched
from failover_poller.notifications import Notification, render
from failover_poller.state_store import StateStore, StateStoreError, StoredSession
from veeam_em.errors import (
    EmAuthenticationError,
    EmConnectionError,
    EmError,
    EmTlsError,
)
from veeam_em.models import CloudFailoverSession

logger = Logger(child=True)

# Discovery asks for sessions that ended since the last poll, less this much for clock skew.
DISCOVERY_OVERLAP = timedelta(minutes=5)
# How long an invocation owns a notification it is publishing before another may retry it.
PUBLISH_LEASE = timedelta(minutes=2)
RETRIES_PER_POLL = 50
# Stop starting new work when the invocation has less than this left.
SAFETY_MARGIN_SECONDS = 5.0


class SessionSource(Protocol):
    """Where sessions come from (EM, or a fake in tests)."""

    url: str

    def fetch(self, watched_ids: tuple[str, ...], since: datetime) -> Fetched:
        """Read the watched sessions, or discover those running or ended since `since`."""


@dataclass
class PollReport:
    """What one poll did, for the log, the metrics and the caller."""

    em_host: str
    ok: bool = True
    failure: str | None = None
    error: str | None = None
    sessions_seen: int = 0
    sessions_changed: int = 0
    session_errors: int = 0
    sessions_gone: int = 0
    claims_lost: int = 0
    notifications: int = 0
    deliveries: int = 0
    publish_failures: int = 0
    retried: int = 0
    out_of_time: bool = False
    notified_sessions: list[str] = field(default_factory=list)

    def fail(self, failure: str, error: Exception) -> None:
        """Mark the whole poll as failed."""
        self.ok = False
        self.failure = failure
        self.error = str(error)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy."""
        return asdict(self)


def failure_kind(error: EmError) -> str:
    """A short, stable name for why a poll could not read EM."""
    if isinstance(error, EmTlsError):
        return "tls"
    if isinstance(error, EmConnectionError):
        return "unreachable"
    if isinstance(error, EmAuthenticationError):
        return "authentication"
    if isinstance(error, CredentialsError):
        return "credentials"
    return "em"


def fingerprint(session: CloudFailoverSession) -> str:
    """A digest of everything about a session whose change is worth a write."""
    facts = [
        session.state,
        session.result,
        session.progress,
        session.end_time.isoformat() if session.end_time else None,
        [(task.vm_name, task.state, task.result) for task in session.tasks],
    ]
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:32]


def is_news(
    previous: StoredSession | None, session: CloudFailoverSession, cutoff: datetime | None
) -> bool:
    """Whether this sighting of `session` is a transition people must hear about.

    A session seen running and now terminal is news. A session first seen already
    terminal is news when it is watched by name (`cutoff` None) or ended after `cutoff`,
    the moment the poller started watching its EM; older ones are history, not news.
    """
    if not session.is_terminal:
        return False
    if previous is not None:
        return not previous.terminal and not previous.notified
    if cutoff is None:
        return True
    ended = session.end_time or session.creation_time
    return ended >= cutoff


def _state_attributes(session: CloudFailoverSession, digest: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "Name": {"S": session.name},
        "State": {"S": session.state},
        "Result": {"S": session.result},
        "Terminal": {"BOOL": session.is_terminal},
        "Fingerprint": {"S": digest},
        "CreationTime": {"S": session.creation_time.isoformat()},
    }
    if session.progress is not None:
        attributes["Progress"] = {"N": str(session.progress)}
    if session.end_time is not None:
        attributes["EndTime"] = {"S": session.end_time.isoformat()}
    return attributes


def _utc_now() -> datetime:
    return datetime.now(UTC)


class PollService:
    """Polls one EM and notifies every transition exactly once per channel."""

    def __init__(
        self,
        source: SessionSource,
        store: StateStore,
        channels: Sequence[Channel],
        *,
        em_host: str,
        watched_ids: tuple[str, ...],
        first_sight_lookback: timedelta,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._source = source
        self._store = store
        self._channels = channels
        self._em_host = em_host
        self._watched_ids = watched_ids
        self._lookback = first_sight_lookback
        self._clock = clock

    def poll(self, remaining_seconds: Callable[[], float] = lambda: float("inf")) -> PollReport:
        """Run one poll; EM faults end up in the report, not raised."""
        report = PollReport(em_host=self._em_host)
        started = self._clock()

        watcher = self._store.watcher(self._em_host, started, self._lookback)
        since = (watcher.last_poll_at or watcher.watching_since) - DISCOVERY_OVERLAP

        try:
            fetched = self._source.fetch(self._watched_ids, since)
        except EmError as error:
            report.fail(failure_kind(error), error)
            logger.error(
                "EM poll failed",
                extra={"em_host": self._em_host, "failure": report.failure, "error": str(error)},
            )
            self._retry_pending(report, remaining_seconds, attempted=set())
            return report

        self._note_problems(fetched, report)
        cutoff = None if self._watched_ids else watcher.watching_since
        for session in fetched.sessions:
            if remaining_seconds() < SAFETY_MARGIN_SECONDS:
                report.out_of_time = True
                break
            self._observe(session, cutoff, report)

        self._retry_pending(report, remaining_seconds, attempted=set(report.notified_sessions))
        if not report.out_of_time:
            self._store.record_poll(self._em_host, started)
        return report

    def _note_problems(self, fetched: Fetched, report: PollReport) -> None:
        report.sessions_seen = len(fetched.sessions)
        for problem in fetched.problems:
            if problem.gone:
                report.sessions_gone += 1
                logger.warning(
                    "watched session not found on EM",
                    extra={"em_host": self._em_host, "session_id": problem.session_id},
                )
                continue
            report.session_errors += 1
            logger.error(
                "session skipped: unreadable EM response",
                extra={
                    "em_host": self._em_host,
                    "session_id": problem.session_id,
                    "error": str(problem.error),
                },
            )

    def _observe(
        self, session: CloudFailoverSession, cutoff: datetime | None, report: PollReport
    ) -> None:
        try:
            self._observe_one(session, cutoff, report)
        except StateStoreError as error:
            report.session_errors += 1
            logger.error(
                "session skipped: state table unavailable",
                extra={"em_host": self._em_host, "session_id": session.id, "error": str(error)},
            )

    def _observe_one(
        self, session: CloudFailoverSession, cutoff: datetime | None, report: PollReport
    ) -> None:
        previous = self._store.get(self._em_host, session.id)
        digest = fingerprint(session)
        if previous is not None and previous.fingerprint == digest:
            return

        now = self._clock()
        notification = (
            render(session, self._em_host) if is_news(previous, session, cutoff) else None
        )
        channels = [channel.name for channel in self._channels]
        claimed = self._store.save(
            self._em_host,
            session.id,
            _state_attributes(session, digest),
            previous,
            now=now,
            notification=notification,
            channels=channels,
            lease=PUBLISH_LEASE,
        )
        if not claimed:
            report.claims_lost += 1
            logger.info(
                "session change claimed by another invocation",
                extra={"em_host": self._em_host, "session_id": session.id},
            )
            return

        report.sessions_changed += 1
        if notification is not None:
            report.notifications += 1
            report.notified_sessions.append(session.id)
            self._deliver(session.id, notification, frozenset(channels), report)

    def _deliver(
        self,
        session_id: str,
        notification: Notification,
        channels: frozenset[str],
        report: PollReport,
    ) -> None:
        remaining = set(channels)
        for channel in self._channels:
            if channel.name not in channels:
                continue
            try:
                channel.publish(notification)
            except PublishError as error:
                report.publish_failures += 1
                logger.warning(
                    "notification publish failed; it stays in the outbox",
                    extra={
                        "em_host": self._em_host,
                        "session_id": session_id,
                        "channel": channel.name,
                        "error_code": error.code,
                    },
                )
                continue

            remaining.discard(channel.name)
            report.deliveries += 1
            self._store.acknowledge(self._em_host, session_id, channel.name, frozenset(remaining))
            logger.info(
                "notification published",
                extra={
                    "em_host": self._em_host,
                    "session_id": session_id,
                    "channel": channel.name,
                    "outcome": notification.outcome,
                },
            )

        if remaining:
            self._store.release_lease(self._em_host, session_id)

    def _retry_pending(
        self, report: PollReport, remaining_seconds: Callable[[], float], attempted: set[str]
    ) -> None:
        try:
            waiting = self._store.pending(self._em_host, RETRIES_PER_POLL)
        except StateStoreError as error:
            logger.error("outbox unreadable", extra={"em_host": self._em_host, "error": str(error)})
            return

        for item in waiting:
            if item.session_id in attempted or remaining_seconds() < SAFETY_MARGIN_SECONDS:
                continue
            try:
                if not self._store.take_lease(
                    self._em_host, item.session_id, self._clock(), PUBLISH_LEASE
                ):
                    continue
                report.retried += 1
                self._deliver(item.session_id, item.notification, item.channels, report)
            except StateStoreError as error:
                logger.error(
                    "outbox retry failed",
                    extra={
                        "em_host": self._em_host,
                        "session_id": item.session_id,
                        "error": str(error),
                    },
                )
