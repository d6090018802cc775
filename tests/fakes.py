"""In-memory stand-ins for the poller's adapters, with the same contracts as the real ones."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from failover_poller.channels import PublishError
from failover_poller.em_source import Fetched, SessionProblem
from failover_poller.notifications import Notification
from failover_poller.state_store import (
    PendingNotification,
    PlanOutcome,
    StoredSession,
    Watcher,
)
from veeam_em.errors import EmError
from veeam_em.models import CloudFailoverSession
from veeam_em.parser import parse_failover_session

FIXTURES = Path(__file__).parent / "fixtures"


def load_session(fixture: str, /, **changes: Any) -> CloudFailoverSession:
    """A session parsed from `tests/fixtures/em/<name>`, with fields changed as given."""
    path = FIXTURES / "em" / fixture
    return replace(parse_failover_session(path.read_bytes(), str(path)), **changes)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class FakeSource:
    """EM as a script: each poll returns the next `Fetched`, or raises the next error."""

    url: str = "https://em01.example.test:9398/api"
    answers: list[Fetched | EmError] = field(default_factory=list)
    calls: list[tuple[tuple[str, ...], datetime]] = field(default_factory=list)

    def answer(
        self, *sessions: CloudFailoverSession, problems: Iterable[SessionProblem] = ()
    ) -> None:
        self.answers.append(Fetched(tuple(sessions), tuple(problems)))

    def fail(self, error: EmError) -> None:
        self.answers.append(error)

    def fetch(
        self,
        watched_ids: tuple[str, ...],
        since: datetime,
        on_sessions: Callable[[Sequence[CloudFailoverSession]], None] | None = None,
    ) -> Fetched:
        self.calls.append((watched_ids, since))
        answer = self.answers.pop(0)
        if isinstance(answer, EmError):
            raise answer
        if on_sessions is not None and answer.sessions:
            on_sessions(answer.sessions)
        return answer


@dataclass
class _Item:
    version: int
    fingerprint: str
    terminal: bool
    notified: bool
    notification: Notification | None = None
    pending: set[str] = field(default_factory=set)
    lease_until: datetime | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


class FakeStateStore:
    """The state table in memory, with the same conditional-write rules as DynamoDB's."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], _Item] = {}
        self.watchers: dict[str, Watcher] = {}
        self.gone: set[str] = set()
        self.plans: dict[str, PlanOutcome] = {}
        self.writes = 0

    def watcher(self, em_host: str, now: datetime, lookback: timedelta) -> Watcher:
        return self.watchers.setdefault(em_host, Watcher(now - lookback, None))

    def record_poll(self, em_host: str, started_at: datetime) -> None:
        self.watchers[em_host] = replace(
            self.watchers[em_host],
            last_poll_at=started_at,
            consecutive_failures=0,
            auth_failures=0,
            next_attempt_at=None,
            failing_since=None,
        )

    def record_failure(
        self, em_host: str, failure: str, *, authentication: bool | None, now: datetime
    ) -> Watcher:
        watcher = self.watchers[em_host]
        auth_failures = {
            True: watcher.auth_failures + 1,
            False: 0,
            None: watcher.auth_failures,
        }[authentication]
        self.watchers[em_host] = replace(
            watcher,
            consecutive_failures=watcher.consecutive_failures + 1,
            auth_failures=auth_failures,
            failing_since=watcher.failing_since or now,
        )
        return self.watchers[em_host]

    def mark_outbox(self, em_host: str, now: datetime) -> datetime:
        watcher = self.watchers[em_host]
        mark = watcher.outbox_since or now
        self.watchers[em_host] = replace(watcher, outbox_since=mark)
        return mark

    def clear_outbox_mark(self, em_host: str, seen: datetime) -> None:
        if self.watchers[em_host].outbox_since == seen:
            self.watchers[em_host] = replace(self.watchers[em_host], outbox_since=None)

    def back_off(self, em_host: str, until: datetime | None) -> None:
        self.watchers[em_host] = replace(self.watchers[em_host], next_attempt_at=until)

    def claim_health_change(
        self,
        em_host: str,
        *,
        unhealthy: bool,
        notification: Notification,
        channels: Iterable[str],
        now: datetime,
        lease: timedelta,
    ) -> bool:
        watcher = self.watchers[em_host]
        if watcher.unhealthy == unhealthy:
            return False
        self.watchers[em_host] = replace(
            watcher, unhealthy=unhealthy, outbox_since=watcher.outbox_since or now
        )
        self.items[(em_host, f"#health/{notification.dedup_key}")] = _Item(
            1, "", False, True, notification, set(channels), now + lease
        )
        return True

    def claim_alert(
        self,
        em_host: str,
        outbox_id: str,
        *,
        notification: Notification,
        channels: Iterable[str],
        now: datetime,
        lease: timedelta,
    ) -> bool:
        if (em_host, outbox_id) in self.items:
            return False
        self.items[(em_host, outbox_id)] = _Item(
            1, "", False, True, notification, set(channels), now + lease
        )
        return True

    def plan_outcomes(self, em_host: str, plan_names: Iterable[str]) -> dict[str, PlanOutcome]:
        wanted = {name.strip().lower() for name in plan_names}
        return {name: outcome for name, outcome in self.plans.items() if name in wanted}

    def record_plan_outcome(
        self,
        em_host: str,
        plan_name: str,
        *,
        session_id: str,
        result: str,
        started: datetime,
        now: datetime,
    ) -> None:
        key = plan_name.strip().lower()
        last = self.plans.get(key)
        failed = session_id if result == "Failed" else (last.failed_session_id if last else None)
        self.plans[key] = PlanOutcome(result, session_id, failed)

    def mark_gone(self, em_host: str, session_id: str, now: datetime) -> bool:
        if session_id in self.gone:
            return False
        self.gone.add(session_id)
        return True

    def get(self, em_host: str, session_id: str) -> StoredSession | None:
        item = self.items.get((em_host, session_id))
        if item is None:
            return None
        attributes = item.attributes
        progress = attributes.get("Progress", {}).get("N")
        since = attributes.get("ProgressSince", {}).get("S")
        return StoredSession(
            session_id,
            item.version,
            item.fingerprint,
            item.terminal,
            item.notified,
            progress=int(progress) if progress is not None else None,
            progress_since=datetime.fromisoformat(since) if since else None,
            stuck_alerted=attributes.get("StuckAlerted", {}).get("BOOL", False),
            started_alerted=attributes.get("StartedAlerted", {}).get("BOOL", False),
        )

    def save(
        self,
        em_host: str,
        session_id: str,
        attributes: dict[str, Any],
        previous: StoredSession | None,
        *,
        now: datetime,
        notification: Notification | None = None,
        channels: Iterable[str] = (),
        lease: timedelta = timedelta(0),
    ) -> bool:
        current = self.items.get((em_host, session_id))
        if (current is None) != (previous is None):
            return False
        if current is not None and previous is not None and current.version != previous.version:
            return False

        self.writes += 1
        item = _Item(
            version=(previous.version + 1) if previous else 1,
            fingerprint=attributes["Fingerprint"]["S"],
            terminal=attributes["Terminal"]["BOOL"],
            notified=bool(current and current.notified) or notification is not None,
            attributes=attributes,
        )
        if notification is not None:
            item.notification = notification
            item.pending = set(channels)
            item.lease_until = now + lease
        elif current is not None:
            item.notification, item.pending = current.notification, current.pending
        self.items[(em_host, session_id)] = item
        return True

    def acknowledge(
        self, em_host: str, session_id: str, channels: frozenset[str], remaining: frozenset[str]
    ) -> None:
        self.items[(em_host, session_id)].pending -= channels

    def get_many(self, em_host: str, session_ids: Sequence[str]) -> dict[str, StoredSession]:
        found = {sid: self.get(em_host, sid) for sid in session_ids}
        return {sid: stored for sid, stored in found.items() if stored is not None}

    def pending(self, em_host: str, limit: int) -> list[PendingNotification]:
        waiting = [
            PendingNotification(session_id, item.notification, frozenset(item.pending))
            for (host, session_id), item in self.items.items()
            if host == em_host and item.pending and item.notification is not None
        ]
        return waiting[:limit]

    def take_lease(self, em_host: str, session_id: str, now: datetime, lease: timedelta) -> bool:
        item = self.items[(em_host, session_id)]
        if not item.pending or (item.lease_until is not None and item.lease_until > now):
            return False
        item.lease_until = now + lease
        return True

    def release_lease(self, em_host: str, session_id: str) -> None:
        self.items[(em_host, session_id)].lease_until = None


@dataclass
class FakeChannel:
    """A channel that records what it took, and fails the next `failures` publishes."""

    name: str
    failures: int = 0
    published: list[Notification] = field(default_factory=list)

    calls: int = 0

    def publish_batch(self, entries: Sequence[tuple[str, Notification]]) -> dict[str, str]:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise PublishError(self.name, "ThrottlingException", "Rate exceeded")
        self.published += [notification for _, notification in entries]
        return {}
