"""What a finished or failed failover session looks like to the people and systems told.

One `Notification` is rendered per transition and stored with the claim, so that a retry
publishes exactly what the first attempt would have.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from veeam_em.models import RESULT_FAILED, RESULT_SUCCESS, CloudFailoverSession

EVENT_SOURCE = "cloud-failover-notifier"
DETAIL_TYPES = {
    "finished": "Cloud Failover Session Finished",
    "failed": "Cloud Failover Session Failed",
}
SCHEMA_VERSION = "1"
SUBJECT_LIMIT = 100


def outcome_of(session: CloudFailoverSession) -> str:
    """`failed` for a Failed result, `finished` for Success or Warning."""
    return "failed" if session.result == RESULT_FAILED else "finished"


def dedup_key(em_host: str, session: CloudFailoverSession) -> str:
    """A key that is the same for every publication of one session's end, on every channel."""
    return f"{em_host}/{session.id}/{session.result}"


@dataclass(frozen=True, slots=True)
class Notification:
    """One transition, rendered for every channel."""

    dedup_key: str
    outcome: str
    session_id: str
    subject: str
    message: str
    attributes: dict[str, str]
    detail_type: str
    detail: dict[str, Any]
    variants: dict[str, str] | None = None
    """Per-protocol SNS bodies (`default`, `email`, `sms`); without them `message` is sent
    to every protocol."""

    def to_json(self) -> str:
        """Serialize for the outbox."""
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Notification:
        """Read back what `to_json` wrote."""
        return cls(**json.loads(text))


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def _human_time(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(session: CloudFailoverSession) -> str:
    if session.end_time is None:
        return "-"
    seconds = int((session.end_time - session.creation_time).total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {seconds:02d}s"
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def _vm_counts(session: CloudFailoverSession) -> dict[str, int]:
    counts = {"total": len(session.tasks), "success": 0, "warning": 0, "failed": 0, "other": 0}
    for task in session.tasks:
        key = task.result.lower()
        counts[key if key in ("success", "warning", "failed") else "other"] += 1
    return counts


def _subject(session: CloudFailoverSession) -> str:
    verb = {RESULT_SUCCESS: "succeeded", RESULT_FAILED: "FAILED"}.get(
        session.result, "finished with warnings"
    )
    ascii_name = session.name.encode("ascii", "replace").decode("ascii")
    printable = "".join(ch if ch.isprintable() else " " for ch in ascii_name)
    tail = f" {verb}"
    head = "Cloud failover "
    room = SUBJECT_LIMIT - len(head) - len(tail) - 2
    name = printable if len(printable) <= room else f"{printable[: room - 3]}..."
    return f'{head}"{name}"{tail}'


def _message(session: CloudFailoverSession, em_host: str) -> str:
    counts = _vm_counts(session)
    lines = [
        f"Cloud failover plan: {session.name}",
        f"Result:              {session.result}",
        f"Started:             {_human_time(session.creation_time)}",
        f"Ended:               {_human_time(session.end_time)}",
        f"Duration:            {_duration(session)}",
        f"VMs:                 {counts['total']} in all, {counts['success']} succeeded, "
        f"{counts['warning']} with warnings, {counts['failed']} failed",
    ]
    if session.failure_message:
        lines.append(f"Failure:             {session.failure_message}")

    if session.tasks:
        lines += ["", "Per-VM outcome:"]
        for task in session.tasks:
            line = f"  - {task.vm_name}: {task.result}"
            if task.failure_message:
                line += f" ({task.failure_message})"
            lines.append(line)

    lines += [
        "",
        f"EM host:             {em_host}",
        f"Backup server:       {session.backup_server_name or '-'}",
        f"Session GUID:        {session.id}",
    ]
    return "\n".join(lines) + "\n"


def _detail(session: CloudFailoverSession, em_host: str, key: str) -> dict[str, Any]:
    duration = None
    if session.end_time is not None:
        duration = int((session.end_time - session.creation_time).total_seconds())
    return {
        "schemaVersion": SCHEMA_VERSION,
        "dedupKey": key,
        "outcome": outcome_of(session),
        "emHost": em_host,
        "sessionId": session.id,
        "sessionUid": session.uid,
        "name": session.name,
        "planName": session.plan_name,
        "jobType": session.job_type,
        "backupServer": session.backup_server_name,
        "state": session.state,
        "result": session.result,
        "progress": session.progress,
        "creationTimeUtc": _iso(session.creation_time),
        "endTimeUtc": _iso(session.end_time),
        "durationSeconds": duration,
        "failureMessage": session.failure_message,
        "vmCounts": _vm_counts(session),
        "tasks": [
            {
                "vmName": task.vm_name,
                "state": task.state,
                "result": task.result,
                "progress": task.progress,
                "creationTimeUtc": _iso(task.creation_time),
                "endTimeUtc": _iso(task.end_time),
                "failureMessage": task.failure_message,
            }
            for task in session.tasks
        ],
    }


def render(session: CloudFailoverSession, em_host: str) -> Notification:
    """Render the notification for a session that has just finished or failed."""
    outcome = outcome_of(session)
    key = dedup_key(em_host, session)
    counts = _vm_counts(session)
    return Notification(
        dedup_key=key,
        outcome=outcome,
        session_id=session.id,
        subject=_subject(session),
        message=_message(session, em_host),
        attributes={
            "event_type": f"failover.{outcome}",
            "result": session.result,
            "session_id": session.id,
            "plan_name": session.name[:256],
            "em_host": em_host,
            "backup_server": session.backup_server_name or "-",
            "any_vm_failed": "true" if counts["failed"] else "false",
            "dedup_key": key,
        },
        detail_type=DETAIL_TYPES[outcome],
        detail=_detail(session, em_host, key),
    )


HEALTH_DETAIL_TYPES = {
    True: "Cloud Failover Poller Unhealthy",
    False: "Cloud Failover Poller Recovered",
}


def render_health(
    em_host: str,
    *,
    unhealthy: bool,
    failing_since: datetime | None,
    failed_polls: int,
    failure: str | None,
    error: str | None,
    next_attempt_at: datetime | None,
    now: datetime,
) -> Notification:
    """Render the poller's own health change: it went blind on an EM, or sees it again."""
    episode = _iso(failing_since or now)
    state = "unhealthy" if unhealthy else "recovered"
    key = f"{em_host}/poller/{state}/{episode}"
    if unhealthy:
        subject = f"Failover notifier cannot poll EM {em_host}"[:SUBJECT_LIMIT]
        lines = [
            f"The cloud failover notifier has not been able to poll EM {em_host} "
            f"for {failed_polls} polls in a row.",
            "Failovers that finish meanwhile are notified once it can poll again.",
            "",
            f"Failing since:       {_human_time(failing_since)}",
            f"Failure:             {failure or '-'}",
            f"Last error:          {error or '-'}",
        ]
        if next_attempt_at is not None:
            lines.append(f"Next logon attempt:  {_human_time(next_attempt_at)}")
    else:
        subject = f"Failover notifier polls EM {em_host} again"[:SUBJECT_LIMIT]
        lines = [
            f"The cloud failover notifier polls EM {em_host} again.",
            "",
            f"It could not poll from {_human_time(failing_since)} to {_human_time(now)}.",
        ]
    return Notification(
        dedup_key=key,
        outcome=f"poller.{state}",
        session_id="",
        subject=subject,
        message="\n".join(lines) + "\n",
        attributes={"event_type": f"poller.{state}", "em_host": em_host, "dedup_key": key},
        detail_type=HEALTH_DETAIL_TYPES[unhealthy],
        detail={
            "schemaVersion": SCHEMA_VERSION,
            "dedupKey": key,
            "emHost": em_host,
            "state": state,
            "failingSinceUtc": episode,
            "failedPolls": failed_polls,
            "failure": failure,
            "error": error,
            "nextAttemptUtc": _iso(next_attempt_at),
            "timeUtc": _iso(now),
        },
    )
