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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from aws_lambda_powertools import Logger

from failover_poller.alerts import AlertPolicy
from failover_poller.channels import Channel, PublishError
from failover_poller.em_source import CredentialsError, Fetched
from failover_poller.notifications import (
    Notification,
    render,
    render_health,
    render_monitoring_gap,
    render_started,
    render_stuck,
)
from failover_poller.plans import PlanDirectory, TenantInfo
from failover_poller.state_store import (
    HEALTH_PREFIX,
    PlanOutcome,
    StateStore,
    StateStoreError,
    StoredSession,
    Watcher,
)
from veeam_em.errors import (
    EmAuthenticationError,
    EmConnectionError,
    EmError,
    EmTlsError,
)
from veeam_em.models import RESULT_FAILED, RESULT_SUCCESS, RESULT_WARNING, CloudFailoverSession

logger = Logger(child=True)

# Outbox items of monitoring-gap alerts, one per gap.
GAP_PREFIX = "#gap/"
# EM keeps sessions this long: a poller away longer may have missed some.
EM_RETENTION = timedelta(days=30)
# Discovery asks for sessions that ended since the last poll, less this much for clock skew.
DISCOVERY_OVERLAP = timedelta(minutes=5)
# How long an invocation owns a notification it is publishing before another may retry it.
PUBLISH_LEASE = timedelta(minutes=2)
RETRIES_PER_POLL = 50
# A container trusts the watcher record it last read or wrote for this long, so that a
# quiet poll reads nothing but the sessions' states; and it records a successful poll
# at most this often, so that a quiet poll writes nothing.
WATCHER_REFRESH = timedelta(minutes=5)
# DynamoDB writes (claims, acknowledgements) and reads in flight at once.
WRITE_CONCURRENCY = 16
READ_CONCURRENCY = 8
# Stop starting new work when the invocation has less than this left.
SAFETY_MARGIN_SECONDS = 5.0
# After this many refused logons in a row, wait before the next (5, 10, 20, 40, 60 minutes).
REFUSALS_BEFORE_BACK_OFF = 2
FIRST_BACK_OFF = timedelta(minutes=5)
LONGEST_BACK_OFF = timedelta(hours=1)


def logon_back_off(refusals: int) -> timedelta | None:
    """How long to wait after `refusals` refused logons in a row, so that a wrong password
    does not lock the EM account out; None while retrying every poll is still fine.
    """
    if refusals < REFUSALS_BEFORE_BACK_OFF:
        return None
    doublings = min(refusals - REFUSALS_BEFORE_BACK_OFF, 8)
    return min(FIRST_BACK_OFF * (1 << doublings), LONGEST_BACK_OFF)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Change:
    """A session whose state differs from the stored one, and what it means: `news` for
    its end, `alerts` (kind, notification) for what else is worth telling, all sent on
    `channels` (EventBridge alone for a muted plan)."""

    session: CloudFailoverSession
    previous: StoredSession | None
    digest: str
    news: bool
    alerts: tuple[tuple[str, Notification], ...]
    progress_since: datetime
    channels: frozenset[str]
    muted: bool
    notification: Notification | None = None

    def stored_after(self) -> StoredSession:
        """The session's stored state once this change is written."""
        attributes = self.attributes()
        previous = self.previous
        return StoredSession(
            session_id=self.session.id,
            version=previous.version + 1 if previous else 1,
            fingerprint=self.digest,
            terminal=self.session.is_terminal,
            notified=bool(previous and previous.notified) or self.notification is not None,
            progress=self.session.progress,
            progress_since=self.progress_since,
            stuck_alerted=attributes["StuckAlerted"]["BOOL"],
            started_alerted=attributes["StartedAlerted"]["BOOL"],
        )

    def attributes(self) -> dict[str, Any]:
        """The session item's attributes after this change."""
        kinds = {kind for kind, _ in self.alerts}
        previous = self.previous
        return _state_attributes(self.session, self.digest) | {
            "ProgressSince": {"S": self.progress_since.isoformat()},
            "StuckAlerted": {"BOOL": "stuck" in kinds or bool(previous and previous.stuck_alerted)},
            "StartedAlerted": {
                "BOOL": "started" in kinds or bool(previous and previous.started_alerted)
            },
        }


@dataclass(frozen=True, slots=True)
class Claim:
    """What a change's claim won: its own write, and the alerts (outbox ID, notification)."""

    saved: bool
    alerts: tuple[tuple[str, Notification], ...]


@dataclass(frozen=True, slots=True)
class Delivery:
    """A claimed notification on its way to `channels`; `outbox_id` is its item's key."""

    outbox_id: str
    notification: Notification
    channels: frozenset[str]


class SessionSource(Protocol):
    """Where sessions come from (EM, or a fake in tests)."""

    url: str

    def fetch(
        self,
        watched_ids: tuple[str, ...],
        since: datetime,
        on_sessions: Callable[[Sequence[CloudFailoverSession]], None] | None = None,
    ) -> Fetched:
        """Read the watched sessions, or discover those running or ended since `since`;
        tell `on_sessions` of each batch as it arrives."""


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
    alerts: int = 0
    deliveries: int = 0
    publish_failures: int = 0
    retried: int = 0
    out_of_time: bool = False
    backing_off: bool = False
    next_attempt_at: str | None = None
    unhealthy: bool = False
    notified_sessions: list[str] = field(default_factory=list)
    notification_delays: list[float] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)

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
        unhealthy_after_polls: int = 3,
        alerts: AlertPolicy | None = None,
        plans: PlanDirectory | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._alerts = alerts or AlertPolicy()
        self._plans = plans
        self._source = source
        self._store = store
        self._channels = channels
        self._em_host = em_host
        self._watched_ids = watched_ids
        self._lookback = first_sight_lookback
        self._unhealthy_after = unhealthy_after_polls
        self._clock = clock
        self._watcher: Watcher | None = None
        self._watcher_read_at: datetime | None = None
        # What this container last read or wrote of each session it saw in its last poll.
        # A session EM reports unchanged from it needs no read: whatever another container
        # wrote meanwhile, nothing about it is news. A changed one is read afresh.
        self._known: dict[str, StoredSession] = {}

    def poll(self, remaining_seconds: Callable[[], float] = lambda: float("inf")) -> PollReport:
        """Run one poll; EM and AWS faults end up in the report, not raised."""
        report = PollReport(em_host=self._em_host)
        try:
            self._poll(report, remaining_seconds)
        except StateStoreError as error:
            report.fail("state", error)
            logger.error(
                "poll stopped: state table unavailable",
                extra={"em_host": self._em_host, "error": str(error)},
            )
        return report

    def _current_watcher(self, now: datetime) -> Watcher:
        """The watcher record: as this container last knew it while all is well and that
        is recent, read afresh otherwise (another container may have polled or failed)."""
        cached, read_at = self._watcher, self._watcher_read_at
        healthy = cached is not None and not (
            cached.consecutive_failures or cached.unhealthy or cached.next_attempt_at
        )
        if (
            cached is not None
            and read_at is not None
            and healthy
            and now - read_at < WATCHER_REFRESH
        ):
            return cached
        return self._remember(self._store.watcher(self._em_host, now, self._lookback), now)

    def _remember(self, watcher: Watcher, now: datetime) -> Watcher:
        self._watcher, self._watcher_read_at = watcher, now
        return watcher

    def _poll_succeeded(self, watcher: Watcher, started: datetime) -> None:
        stale = watcher.last_poll_at is None or started - watcher.last_poll_at >= WATCHER_REFRESH
        if not (stale or watcher.consecutive_failures or watcher.next_attempt_at):
            return
        self._store.record_poll(self._em_host, started)
        self._watcher = replace(
            self._watcher or watcher,
            last_poll_at=started,
            consecutive_failures=0,
            auth_failures=0,
            next_attempt_at=None,
            failing_since=None,
        )

    def _poll(self, report: PollReport, remaining_seconds: Callable[[], float]) -> None:
        started = self._clock()
        watcher = self._current_watcher(started)

        if watcher.next_attempt_at is not None and started < watcher.next_attempt_at:
            self._back_off(report, watcher, started)
            self._retry_pending(report, remaining_seconds, attempted=set())
            return

        since = (watcher.last_poll_at or watcher.watching_since) - DISCOVERY_OVERLAP
        reads = ThreadPoolExecutor(max_workers=READ_CONCURRENCY)
        pending_reads: list[Future[dict[str, StoredSession]]] = []
        asked: set[str] = set()

        def read_states(sessions: Sequence[CloudFailoverSession]) -> None:
            # The stored states of each page are read while EM sends the next ones.
            ids = [
                session.id
                for session in sessions
                if session.id not in asked and not self._known_unchanged(session)
            ]
            asked.update(ids)
            if ids:
                pending_reads.append(reads.submit(self._store.get_many, self._em_host, ids))

        try:
            fetched = self._source.fetch(self._watched_ids, since, read_states)
        except EmError as error:
            reads.shutdown(wait=True, cancel_futures=True)
            self._poll_failed(report, error, started)
            self._retry_pending(report, remaining_seconds, attempted=set())
            return

        last_poll = watcher.last_poll_at
        if last_poll is not None and started - last_poll > EM_RETENTION:
            self._tell_gap(report, last_poll, started)
        self._note_problems(fetched, report)
        cutoff = None if self._watched_ids else watcher.watching_since
        with reads:
            stored = self._stored_states(fetched, pending_reads, asked, report)
        claimed = (
            self._observe_all(fetched.sessions, stored, cutoff, report, remaining_seconds)
            if stored is not None
            else []
        )
        self._deliver(claimed, report)

        if watcher.unhealthy:
            self._change_health(report, watcher, unhealthy=False, now=self._clock())
        self._retry_pending(report, remaining_seconds, attempted=set(report.notified_sessions))
        if report.out_of_time or report.session_errors:
            # Keep discovery's window open from the last complete poll, so that a session
            # not read (or not saved) this time is found again, however it ends meanwhile.
            logger.warning(
                "poll incomplete; the next one looks back as far as this one did",
                extra={"em_host": self._em_host, "session_errors": report.session_errors},
            )
        else:
            self._poll_succeeded(watcher, started)

    def _tell_gap(self, report: PollReport, last_poll: datetime, now: datetime) -> None:
        """The poller was away longer than EM keeps sessions: say once what may be missed."""
        notification = render_monitoring_gap(
            self._em_host, last_poll_at=last_poll, now=now, time_zone=self._alerts.time_zone
        )
        channels = frozenset(channel.name for channel in self._channels)
        outbox_id = f"{GAP_PREFIX}{_iso(last_poll)}"
        self._mark_outbox()
        if self._store.claim_alert(
            self._em_host,
            outbox_id,
            notification=notification,
            channels=channels,
            now=now,
            lease=PUBLISH_LEASE,
        ):
            report.alerts += 1
            logger.warning(
                "monitoring gap longer than EM keeps sessions",
                extra={"em_host": self._em_host, "last_poll_at": _iso(last_poll)},
            )
            self._deliver([Delivery(outbox_id, notification, channels)], report)

    def _poll_failed(self, report: PollReport, error: EmError, now: datetime) -> None:
        report.fail(failure_kind(error), error)
        refused = isinstance(error, EmAuthenticationError)
        watcher = self._remember(
            self._store.record_failure(
                self._em_host, report.failure or "em", authentication=refused, now=now
            ),
            now,
        )

        pause = logon_back_off(watcher.auth_failures) if refused else None
        if pause is not None:
            watcher = self._remember(replace(watcher, next_attempt_at=now + pause), now)
            self._store.back_off(self._em_host, watcher.next_attempt_at)
        report.next_attempt_at = _iso(watcher.next_attempt_at)
        logger.error(
            "EM poll failed",
            extra={
                "em_host": self._em_host,
                "failure": report.failure,
                "error": report.error,
                "consecutive_failures": watcher.consecutive_failures,
                "next_attempt_at": report.next_attempt_at,
            },
        )
        self._check_health(report, watcher, now)

    def _back_off(self, report: PollReport, watcher: Watcher, now: datetime) -> None:
        next_attempt = _iso(watcher.next_attempt_at)
        error = EmAuthenticationError(
            self._em_host,
            f"logon paused after {watcher.auth_failures} refusals in a row, "
            f"so as not to lock the EM account; next attempt at {next_attempt}",
        )
        report.fail("authentication", error)
        report.backing_off = True
        report.next_attempt_at = next_attempt
        watcher = self._remember(
            self._store.record_failure(
                self._em_host, "authentication", authentication=None, now=now
            ),
            now,
        )
        logger.warning(
            "EM logon paused after repeated authentication failures",
            extra={"em_host": self._em_host, "next_attempt_at": next_attempt},
        )
        self._check_health(report, watcher, now)

    def _check_health(self, report: PollReport, watcher: Watcher, now: datetime) -> None:
        report.unhealthy = watcher.unhealthy
        if watcher.unhealthy or watcher.consecutive_failures < self._unhealthy_after:
            return
        self._change_health(report, watcher, unhealthy=True, now=now)

    def _change_health(
        self, report: PollReport, watcher: Watcher, *, unhealthy: bool, now: datetime
    ) -> None:
        notification = render_health(
            self._em_host,
            unhealthy=unhealthy,
            failing_since=watcher.failing_since,
            failed_polls=watcher.consecutive_failures,
            failure=report.failure,
            error=report.error,
            next_attempt_at=watcher.next_attempt_at,
            now=now,
        )
        channels = frozenset(channel.name for channel in self._channels)
        try:
            claimed = self._store.claim_health_change(
                self._em_host,
                unhealthy=unhealthy,
                notification=notification,
                channels=channels,
                now=now,
                lease=PUBLISH_LEASE,
            )
        except StateStoreError as error:
            logger.error(
                "poller health change not recorded",
                extra={"em_host": self._em_host, "error": str(error)},
            )
            return

        report.unhealthy = unhealthy if claimed else report.unhealthy
        if self._watcher is not None:
            self._watcher = replace(
                self._watcher, unhealthy=unhealthy, outbox_since=self._watcher.outbox_since or now
            )
        if claimed:
            logger.warning(
                "poller health changed",
                extra={"em_host": self._em_host, "unhealthy": unhealthy},
            )
            outbox_id = f"{HEALTH_PREFIX}{notification.dedup_key}"
            self._deliver([Delivery(outbox_id, notification, channels)], report)

    def _note_problems(self, fetched: Fetched, report: PollReport) -> None:
        report.sessions_seen = len(fetched.sessions)
        for problem in fetched.problems:
            if problem.gone and problem.session_id is not None:
                self._note_gone(problem.session_id, report)
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

    def _note_gone(self, session_id: str, report: PollReport) -> None:
        try:
            first_time = self._store.mark_gone(self._em_host, session_id, self._clock())
        except StateStoreError as error:
            report.session_errors += 1
            logger.error(
                "session skipped: state table unavailable",
                extra={"em_host": self._em_host, "session_id": session_id, "error": str(error)},
            )
            return
        if first_time:
            report.sessions_gone += 1
            logger.warning(
                "watched session not found on EM; marked gone",
                extra={"em_host": self._em_host, "session_id": session_id},
            )

    def _known_unchanged(self, session: CloudFailoverSession) -> bool:
        known = self._known.get(session.id)
        return known is not None and known.fingerprint == fingerprint(session)

    def _remember_sessions(
        self, stored: dict[str, StoredSession], changes: Sequence[Change], outcomes: Sequence[Any]
    ) -> None:
        """Keep, for the next poll, what this poll read and wrote of the sessions it saw."""
        known = dict(stored)
        for change, outcome in zip(changes, outcomes, strict=True):
            if isinstance(outcome, Claim) and outcome.saved:
                known[change.session.id] = change.stored_after()
            else:
                known.pop(change.session.id, None)
        self._known = known

    def _stored_states(
        self,
        fetched: Fetched,
        pending_reads: list[Future[dict[str, StoredSession]]],
        asked: set[str],
        report: PollReport,
    ) -> dict[str, StoredSession] | None:
        """The stored state of every fetched session: those read while EM was answering,
        and the rest now (watched sessions arrive all at once)."""
        stored: dict[str, StoredSession] = {}
        try:
            for future in pending_reads:
                stored |= future.result()
            missing = [
                session.id
                for session in fetched.sessions
                if session.id not in asked and not self._known_unchanged(session)
            ]
            if missing:
                stored |= self._store.get_many(self._em_host, missing)
            for session in fetched.sessions:
                if session.id not in stored and self._known_unchanged(session):
                    stored[session.id] = self._known[session.id]
        except StateStoreError as error:
            report.session_errors += len(fetched.sessions)
            logger.error(
                "sessions skipped: state table unavailable",
                extra={
                    "em_host": self._em_host,
                    "count": len(fetched.sessions),
                    "error": str(error),
                },
            )
            return None
        return stored

    def _observe_all(
        self,
        sessions: Sequence[CloudFailoverSession],
        stored: dict[str, StoredSession],
        cutoff: datetime | None,
        report: PollReport,
        remaining_seconds: Callable[[], float],
    ) -> list[Delivery]:
        """Claim every change worth a write; return the notifications claimed."""

        now = self._clock()
        changes: list[Change] = []
        for session in sessions:
            if remaining_seconds() < SAFETY_MARGIN_SECONDS:
                report.out_of_time = True
                break
            change = self._change(session, stored.get(session.id), cutoff, now)
            if change is not None:
                changes.append(change)
        if not changes:
            self._remember_sessions(stored, [], [])
            return []

        try:
            changes = self._render_news(changes)
            if any(change.notification or change.alerts for change in changes):
                self._mark_outbox()
        except StateStoreError as error:
            self._known = {}
            report.session_errors += len(changes)
            logger.error(
                "sessions skipped: state table unavailable",
                extra={"em_host": self._em_host, "error": str(error)},
            )
            return []

        with ThreadPoolExecutor(max_workers=WRITE_CONCURRENCY) as pool:
            outcomes = list(pool.map(self._claim, changes))
        self._remember_sessions(stored, changes, outcomes)
        deliveries: list[Delivery] = []
        for change, outcome in zip(changes, outcomes, strict=True):
            deliveries += self._count_claim(change, outcome, report)
        return deliveries

    def _change(
        self,
        session: CloudFailoverSession,
        previous: StoredSession | None,
        cutoff: datetime | None,
        now: datetime,
    ) -> Change | None:
        digest = fingerprint(session)
        moved = previous is None or previous.progress != session.progress
        progress_since = now if moved or previous is None else previous.progress_since or now
        muted = self._alerts.muted(session.name, now)
        alerts = (
            ()
            if session.is_terminal
            else self._alerts_for(session, previous, progress_since, now, muted)
        )
        if previous is not None and previous.fingerprint == digest and not alerts:
            return None

        channels = frozenset(channel.name for channel in self._channels)
        return Change(
            session=session,
            previous=previous,
            digest=digest,
            news=is_news(previous, session, cutoff),
            alerts=alerts,
            progress_since=progress_since,
            channels=frozenset({"eventbridge"}) & channels if muted else channels,
            muted=muted,
        )

    def _alerts_for(
        self,
        session: CloudFailoverSession,
        previous: StoredSession | None,
        progress_since: datetime,
        now: datetime,
        muted: bool,
    ) -> tuple[tuple[str, Notification], ...]:
        alerts: list[tuple[str, Notification]] = []
        tenant = self._tenant(session)
        zone = self._alerts.time_zone
        if self._alerts.notify_started and previous is None:
            started = render_started(
                session, self._em_host, tenant=tenant, time_zone=zone, muted=muted
            )
            alerts.append(("started", started))
        stuck = self._alerts.stuck_reason(session.creation_time, progress_since, now)
        if stuck is not None and not (previous is not None and previous.stuck_alerted):
            reason, threshold = stuck
            notification = render_stuck(
                session,
                self._em_host,
                reason=reason,
                threshold=threshold,
                now=now,
                tenant=tenant,
                time_zone=zone,
                muted=muted,
            )
            alerts.append(("stuck", notification))
        return tuple(alerts)

    def _tenant(self, session: CloudFailoverSession) -> TenantInfo | None:
        return self._plans.tenant_for(session.name) if self._plans is not None else None

    def _render_news(self, changes: list[Change]) -> list[Change]:
        """Render each session's end, telling a recovery when its plan last failed."""
        # A plan's sessions run one after another: their start orders them (end times,
        # cut to whole seconds by some EMs, may tie or even cross).
        news = sorted(
            (change for change in changes if change.news),
            key=lambda change: change.session.creation_time,
        )
        if not news:
            return changes

        outcomes = self._store.plan_outcomes(self._em_host, [c.session.name for c in news])
        rendered: dict[str, Notification] = {}
        for change in news:
            session, plan = change.session, change.session.name.strip().lower()
            last = outcomes.get(plan)
            recovered_from = None
            succeeded = session.result in (RESULT_SUCCESS, RESULT_WARNING)
            if (
                succeeded
                and last
                and last.result == RESULT_FAILED
                and last.session_id != session.id
            ):
                recovered_from = last.failed_session_id or last.session_id
            rendered[session.id] = render(
                session,
                self._em_host,
                tenant=self._tenant(session),
                time_zone=self._alerts.time_zone,
                muted=change.muted,
                recovered_from=recovered_from,
            )
            failed_id = session.id if session.result == RESULT_FAILED else None
            outcomes[plan] = PlanOutcome(session.result, session.id, failed_id)
        return [
            replace(change, notification=rendered[change.session.id]) if change.news else change
            for change in changes
        ]

    def _mark_outbox(self) -> None:
        if self._watcher is not None and self._watcher.outbox_since is not None:
            return
        mark = self._store.mark_outbox(self._em_host, self._clock())
        if self._watcher is not None:
            self._watcher = replace(self._watcher, outbox_since=mark)

    def _claim(self, change: Change) -> Claim | StateStoreError:
        """Write one change, conditional on the state read, then claim its alerts. Runs on
        a worker thread, so it reports its error instead of raising."""
        session, now = change.session, self._clock()
        try:
            saved = self._store.save(
                self._em_host,
                session.id,
                change.attributes(),
                change.previous,
                now=now,
                notification=change.notification,
                channels=change.channels,
                lease=PUBLISH_LEASE,
            )
            if not saved:
                return Claim(saved=False, alerts=())
            alerts = tuple(
                (f"{session.id}#{kind}", notification)
                for kind, notification in change.alerts
                if self._store.claim_alert(
                    self._em_host,
                    f"{session.id}#{kind}",
                    notification=notification,
                    channels=change.channels,
                    now=now,
                    lease=PUBLISH_LEASE,
                )
            )
            if change.notification is not None:
                self._store.record_plan_outcome(
                    self._em_host,
                    session.name,
                    session_id=session.id,
                    result=session.result,
                    started=session.creation_time,
                    now=now,
                )
        except StateStoreError as error:
            return error
        return Claim(saved=True, alerts=alerts)

    def _count_claim(
        self, change: Change, outcome: Claim | StateStoreError, report: PollReport
    ) -> list[Delivery]:
        session_id = change.session.id
        if isinstance(outcome, StateStoreError):
            report.session_errors += 1
            logger.error(
                "session skipped: state table unavailable",
                extra={"em_host": self._em_host, "session_id": session_id, "error": str(outcome)},
            )
            return []
        if not outcome.saved:
            report.claims_lost += 1
            logger.info(
                "session change claimed by another invocation",
                extra={"em_host": self._em_host, "session_id": session_id},
            )
            return []

        report.sessions_changed += 1
        deliveries = [Delivery(key, alert, change.channels) for key, alert in outcome.alerts]
        report.alerts += len(deliveries)
        if change.notification is not None:
            report.notifications += 1
            report.notified_sessions.append(session_id)
            deliveries.append(Delivery(session_id, change.notification, change.channels))
        return deliveries

    def _deliver(self, deliveries: Sequence[Delivery], report: PollReport) -> None:
        """Publish each channel's share in batches and record, as soon as a channel has
        taken a notification, that it did, so that an invocation dying later never makes
        a retry publish it twice there. What is left stays in the outbox for a later poll.
        """
        if not deliveries:
            return

        remaining = {delivery.outbox_id: set(delivery.channels) for delivery in deliveries}
        for channel in self._channels:
            batch = [d for d in deliveries if channel.name in d.channels]
            if not batch:
                continue
            failed = self._publish(channel, batch, report)
            taken = []
            for delivery in batch:
                if delivery.outbox_id in failed:
                    continue
                if remaining[delivery.outbox_id] == set(delivery.channels):
                    self._note_delay(delivery.notification, report)
                remaining[delivery.outbox_id].discard(channel.name)
                report.deliveries += 1
                taken.append((delivery, channel.name, frozenset(remaining[delivery.outbox_id])))
            self._record_all(taken)

        self._record_all(
            [
                (d, None, frozenset(remaining[d.outbox_id]))
                for d in deliveries
                if remaining[d.outbox_id]
            ]
        )
        report.completed += [d.outbox_id for d in deliveries if not remaining[d.outbox_id]]

    def _record_all(self, records: Sequence[tuple[Delivery, str | None, frozenset[str]]]) -> None:
        with ThreadPoolExecutor(max_workers=WRITE_CONCURRENCY) as pool:
            list(pool.map(lambda record: self._record(*record), records))

    def _record(self, delivery: Delivery, channel: str | None, remaining: frozenset[str]) -> None:
        """Acknowledge `channel`, or (with None) give the lease back for a retry."""
        try:
            if channel is None:
                self._store.release_lease(self._em_host, delivery.outbox_id)
            else:
                self._store.acknowledge(
                    self._em_host, delivery.outbox_id, frozenset({channel}), remaining
                )
        except StateStoreError as error:
            logger.error(
                "delivery not recorded; the outbox may publish it again",
                extra={
                    "em_host": self._em_host,
                    "session_id": delivery.outbox_id,
                    "channel": channel,
                    "error": str(error),
                },
            )

    def _publish(self, channel: Channel, batch: list[Delivery], report: PollReport) -> set[str]:
        """Publish `batch` on `channel`; return the outbox IDs it did not take."""
        try:
            failures = channel.publish_batch([(d.outbox_id, d.notification) for d in batch])
        except PublishError as error:
            failures = {d.outbox_id: error.code for d in batch}

        for outbox_id, code in failures.items():
            report.publish_failures += 1
            logger.warning(
                "notification publish failed; it stays in the outbox",
                extra={
                    "em_host": self._em_host,
                    "session_id": outbox_id,
                    "channel": channel.name,
                    "error_code": code,
                },
            )
        logger.info(
            "notifications published",
            extra={
                "em_host": self._em_host,
                "channel": channel.name,
                "count": len(batch) - len(failures),
            },
        )
        return set(failures)

    def _note_delay(self, notification: Notification, report: PollReport) -> None:
        ended = notification.detail.get("endTimeUtc")
        if isinstance(ended, str):
            delay = self._clock() - datetime.fromisoformat(ended)
            report.notification_delays.append(round(delay.total_seconds(), 3))

    def _retry_pending(
        self, report: PollReport, remaining_seconds: Callable[[], float], attempted: set[str]
    ) -> None:
        mark = self._watcher.outbox_since if self._watcher is not None else None
        if mark is None:
            return
        try:
            waiting = self._store.pending(self._em_host, RETRIES_PER_POLL)
            if all(item.session_id in report.completed for item in waiting):
                # Nothing waits (an index may still list what this poll just delivered).
                self._store.clear_outbox_mark(self._em_host, mark)
                if self._watcher is not None:
                    self._watcher = replace(self._watcher, outbox_since=None)
                return
        except StateStoreError as error:
            logger.error("outbox unreadable", extra={"em_host": self._em_host, "error": str(error)})
            return

        leased: list[Delivery] = []
        for item in waiting:
            if item.session_id in attempted or remaining_seconds() < SAFETY_MARGIN_SECONDS:
                continue
            try:
                if self._store.take_lease(
                    self._em_host, item.session_id, self._clock(), PUBLISH_LEASE
                ):
                    leased.append(Delivery(item.session_id, item.notification, item.channels))
            except StateStoreError as error:
                logger.error(
                    "outbox retry failed",
                    extra={
                        "em_host": self._em_host,
                        "session_id": item.session_id,
                        "error": str(error),
                    },
                )
        report.retried += len(leased)
        self._deliver(leased, report)
