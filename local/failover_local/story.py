"""The scripted timeline of cloud failover sessions that the EM simulator plays.

A ``Story`` holds sessions whose start and end are offsets in seconds from the story's
start, and the failover plans (each with its tenant) that those sessions run.
``Story.snapshot`` says what EM would report about each session at a given moment, so the
simulator never keeps state of its own and a test can set ``started_at`` in the past to
find sessions already in the state it needs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

STARTING_SECONDS = 0.2
"""How long a session or task reports ``Starting`` before ``Working``."""

_TASK_STAGGER_SECONDS = 0.05
_RUNNING_PROGRESS_HALF_TIME = 10.0
_REPLICA_POINT_AGE = timedelta(hours=14, minutes=27, seconds=13)
_FRACTION_DIGITS = (0, 2, 3, 6)


@dataclass(frozen=True)
class ScriptedVm:
    """One VM of a scripted session.

    It finishes with ``result`` when the session ends, or at ``finish_offset`` seconds
    from the story's start if that comes earlier.
    """

    name: str
    result: str = "Success"
    failure_message: str | None = None
    finish_offset: float | None = None


@dataclass(frozen=True)
class ScriptedSession:
    """One scripted cloud failover session.

    ``starts_at`` and ``ends_at`` are seconds from the story's start (negative means
    before it); ``ends_at`` None means the session is still running when the story ends.
    ``result`` and ``failure_message`` are what it reports once stopped.
    """

    guid: str
    plan_name: str
    backup_server: str
    starts_at: float
    ends_at: float | None
    result: str
    failure_message: str | None
    vms: tuple[ScriptedVm, ...]


@dataclass(frozen=True)
class ScriptedPlan:
    """A cloud failover plan and the tenant that owns it; plans do not change in a story."""

    guid: str
    name: str
    tenant_name: str

    @property
    def tenant_id(self) -> str:
        """The stable GUID the simulator gives the tenant called ``tenant_name``."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"tenant:{self.tenant_name}"))


@dataclass(frozen=True)
class TaskState:
    """What EM reports about one VM of a session at one moment."""

    vm_name: str
    replica_point_id: str
    replica_point_name: str
    created_at: datetime
    ended_at: datetime | None
    state: str
    result: str
    progress: int
    failure_message: str | None


@dataclass(frozen=True)
class SessionState:
    """What EM reports about one session at one moment.

    Times are already cut to the precision EM shows for this session, so comparing them
    gives the same answer a client gets from the XML.
    """

    guid: str
    name: str
    backup_server_id: str
    backup_server_name: str
    created_at: datetime
    ended_at: datetime | None
    state: str
    result: str
    progress: int
    failure_message: str | None
    tasks: tuple[TaskState, ...]


@dataclass(frozen=True)
class Story:
    """Sessions placed on a timeline that starts at ``started_at`` (timezone-aware UTC),
    and the failover plans EM knows."""

    sessions: tuple[ScriptedSession, ...]
    started_at: datetime
    plans: tuple[ScriptedPlan, ...] = ()

    @property
    def duration(self) -> float:
        """Seconds from the start to the last scripted end (0 when nothing ends)."""
        ends = [s.ends_at for s in self.sessions if s.ends_at is not None]
        return max([0.0, *ends])

    def snapshot(self, now: datetime) -> list[SessionState]:
        """Every session created at or before ``now``, as EM would report it then."""
        elapsed = (now - self.started_at).total_seconds()
        return [
            _session_state(self.started_at, session, elapsed)
            for session in self.sessions
            if session.starts_at <= elapsed
        ]


def demo_story(started_at: datetime, pace: float = 1.0) -> Story:
    """The story ``make run`` tells: about six steps of ``pace`` seconds each.

    With ``pace=1`` and a poll every second it shows a success, a warning, a partial
    failure, the failed plan's second run that recovers it, a session that starts and ends
    between two polls, one still running at the end (stuck, with the runner's short
    thresholds), and one that ended 20 days before the start (20 days regardless of
    ``pace``), which a freshly deployed notifier must not report.
    """
    old_start = -timedelta(days=20).total_seconds()
    sessions = (
        ScriptedSession(
            guid="0b7c2f3e-9d41-4c55-8a0e-6f1d2c3b4a50",
            plan_name="Contoso Failover Plan",
            backup_server="vbr-sp01.example.test",
            starts_at=old_start,
            ends_at=old_start + 95.0,
            result="Success",
            failure_message=None,
            vms=(ScriptedVm("app-vm-01"), ScriptedVm("db-vm-02")),
        ),
        ScriptedSession(
            guid="4be1d766-bf90-465a-8df1-2b949f7be762",
            plan_name="Contoso Failover Plan",
            backup_server="vbr-sp01.example.test",
            starts_at=0.5 * pace,
            ends_at=3.5 * pace,
            result="Success",
            failure_message=None,
            vms=(
                ScriptedVm("app-vm-01", finish_offset=2.5 * pace),
                ScriptedVm("db-vm-02"),
            ),
        ),
        ScriptedSession(
            guid="aa6845c2-6440-47b3-85e9-8895f3989886",
            plan_name="Fabrikam DR Plan",
            backup_server="192.0.2.25",
            starts_at=1.0 * pace,
            ends_at=4.0 * pace,
            result="Warning",
            failure_message=None,
            vms=(
                ScriptedVm("web-vm-01"),
                ScriptedVm(
                    "web-vm-02",
                    result="Warning",
                    failure_message=(
                        "Replica started, but no guest OS heartbeat was received within "
                        "the 10 minute timeout."
                    ),
                ),
            ),
        ),
        ScriptedSession(
            guid="5d3e8f21-7a6b-4c19-9e2d-1f0a8b7c6d53",
            plan_name="Northwind Failover Plan",
            backup_server="vbr-sp02.example.test",
            starts_at=1.5 * pace,
            ends_at=5.0 * pace,
            result="Failed",
            failure_message="2 of 3 VMs failed to fail over.",
            vms=(
                ScriptedVm(
                    "sql-vm-01",
                    result="Failed",
                    failure_message=(
                        "Failed to power on the replica: not enough memory on host "
                        "esx-cc02.example.test."
                    ),
                    finish_offset=3.0 * pace,
                ),
                ScriptedVm("app-vm-03"),
                ScriptedVm(
                    "file-vm-04",
                    result="Failed",
                    failure_message="Replica VM not found in the cloud host inventory.",
                ),
            ),
        ),
        ScriptedSession(
            guid="c2f9a4b7-3e18-4d6a-b5c0-8e7f6a5d4c32",
            plan_name="Tailspin Test Plan",
            backup_server="vbr-sp01.example.test",
            starts_at=2.2 * pace,
            ends_at=2.6 * pace,
            result="Success",
            failure_message=None,
            vms=(ScriptedVm("test-vm-01"),),
        ),
        ScriptedSession(
            guid="f3b7d2a1-8c4e-4b6f-9a15-2e7d6c5b4a38",
            plan_name="Northwind Failover Plan",
            backup_server="vbr-sp02.example.test",
            starts_at=5.2 * pace,
            ends_at=5.9 * pace,
            result="Success",
            failure_message=None,
            vms=(ScriptedVm("sql-vm-01"), ScriptedVm("app-vm-03"), ScriptedVm("file-vm-04")),
        ),
        ScriptedSession(
            guid="e8a1d6c4-2b7f-4f3e-a9d8-7c6b5a4f3e29",
            plan_name="Woodgrove Failover Plan",
            backup_server="vbr-sp02.example.test",
            starts_at=3.0 * pace,
            ends_at=None,
            result="Success",
            failure_message=None,
            vms=(ScriptedVm("erp-vm-01"), ScriptedVm("erp-vm-02")),
        ),
    )
    return Story(sessions=sessions, started_at=started_at, plans=DEMO_PLANS)


DEMO_PLANS = (
    ScriptedPlan("6f0c1a2b-3d4e-4f50-8a61-7b8c9d0e1f21", "Contoso Failover Plan", "Contoso Ltd"),
    ScriptedPlan("7a1d2b3c-4e5f-4061-9b72-8c9d0e1f2a32", "Fabrikam DR Plan", "Fabrikam Inc"),
    ScriptedPlan(
        "8b2e3c4d-5f60-4172-ac83-9d0e1f2a3b43", "Northwind Failover Plan", "Northwind Traders"
    ),
    ScriptedPlan("9c3f4d5e-6071-4283-bd94-0e1f2a3b4c54", "Tailspin Test Plan", "Tailspin Toys"),
    ScriptedPlan(
        "ad405e6f-7182-4394-cea5-1f2a3b4c5d65", "Woodgrove Failover Plan", "Woodgrove Bank"
    ),
)
"""The demo story's plans, one tenant each."""


def _session_state(origin: datetime, session: ScriptedSession, elapsed: float) -> SessionState:
    digits = _fraction_digits(session.guid)
    created_at = _truncate(origin + timedelta(seconds=session.starts_at), digits)
    stopped = session.ends_at is not None and elapsed >= session.ends_at

    tasks = tuple(
        _task_state(origin, session, index, vm, elapsed)
        for index, vm in enumerate(session.vms)
        if session.starts_at + _task_delay(session, index) <= elapsed
    )

    if stopped:
        assert session.ends_at is not None  # narrowed by ``stopped``
        return SessionState(
            guid=session.guid,
            name=session.plan_name,
            backup_server_id=backup_server_id(session.backup_server),
            backup_server_name=session.backup_server,
            created_at=created_at,
            ended_at=_truncate(origin + timedelta(seconds=session.ends_at), digits),
            state="Stopped",
            result=session.result,
            progress=100,
            failure_message=session.failure_message,
            tasks=tasks,
        )

    age = elapsed - session.starts_at
    return SessionState(
        guid=session.guid,
        name=session.plan_name,
        backup_server_id=backup_server_id(session.backup_server),
        backup_server_name=session.backup_server,
        created_at=created_at,
        ended_at=None,
        state="Starting" if age < STARTING_SECONDS else "Working",
        result="None",
        progress=_running_progress(age, session.starts_at, session.ends_at),
        failure_message=None,
        tasks=tasks,
    )


def _task_state(
    origin: datetime, session: ScriptedSession, index: int, vm: ScriptedVm, elapsed: float
) -> TaskState:
    digits = _fraction_digits(session.guid)
    starts_at = session.starts_at + _task_delay(session, index)
    ends_at = _task_end(session, vm)
    replica_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"replica:{session.guid}:{vm.name}"))
    replica_time = origin + timedelta(seconds=session.starts_at) - _REPLICA_POINT_AGE
    replica_name = f"{vm.name}@{replica_time:%Y-%m-%d %H:%M:%S}"
    created_at = _truncate(origin + timedelta(seconds=starts_at), digits)

    if ends_at is not None and elapsed >= ends_at:
        return TaskState(
            vm_name=vm.name,
            replica_point_id=replica_id,
            replica_point_name=replica_name,
            created_at=created_at,
            ended_at=_truncate(origin + timedelta(seconds=ends_at), digits),
            state="Stopped",
            result=vm.result,
            progress=100,
            failure_message=vm.failure_message,
        )

    age = elapsed - starts_at
    return TaskState(
        vm_name=vm.name,
        replica_point_id=replica_id,
        replica_point_name=replica_name,
        created_at=created_at,
        ended_at=None,
        state="Starting" if age < STARTING_SECONDS else "Working",
        result="None",
        progress=_running_progress(age, starts_at, ends_at),
        failure_message=None,
    )


def backup_server_id(name: str) -> str:
    """The stable GUID the simulator gives the backup server called ``name``."""
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, name))


def _task_delay(session: ScriptedSession, index: int) -> float:
    # Tasks appear just after their session, never after it ends.
    delay = _TASK_STAGGER_SECONDS * (index + 1)
    if session.ends_at is None:
        return delay
    return min(delay, session.ends_at - session.starts_at)


def _task_end(session: ScriptedSession, vm: ScriptedVm) -> float | None:
    if vm.finish_offset is None:
        return session.ends_at
    if session.ends_at is None:
        return vm.finish_offset
    return min(vm.finish_offset, session.ends_at)


def _running_progress(age: float, starts_at: float, ends_at: float | None) -> int:
    if age < STARTING_SECONDS:
        return 0
    if ends_at is None:
        # Never reaches 99 exactly, like a long-running failover.
        return min(99, int(99 * age / (age + _RUNNING_PROGRESS_HALF_TIME)))
    span = max(ends_at - starts_at, 1e-9)
    return max(0, min(99, int(99 * age / span)))


def _fraction_digits(guid: str) -> int:
    # Real EMs print 0 to 6 fractional digits; each session (and its tasks) keeps one.
    return _FRACTION_DIGITS[int(guid[-2:], 16) % len(_FRACTION_DIGITS)]


def _truncate(moment: datetime, digits: int) -> datetime:
    unit = 10 ** (6 - digits)
    return moment.replace(microsecond=moment.microsecond // unit * unit)
