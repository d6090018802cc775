"""What a failover session, or the poller itself, looks like to the people and systems told.

One `Notification` is rendered per alert and stored with the claim, so that a retry
publishes exactly what the first attempt would have. It carries one body per SNS protocol
(`email` laid out for reading, `sms` in one GSM-7 segment, a short `default`), message
attributes for subscription filter policies, and the EventBridge detail described by
`events/failover-notification.schema.json`.

Every value that comes from EM is untrusted: it passes through `clean` (control characters
out, length bounded) before it reaches a subject, an email or an SMS. The sizes the
channels allow are kept here, on the bytes actually published: the whole SNS message under
256 KB however many VMs a plan has, the subject at most 100 printable ASCII characters.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Literal

from failover_poller.plans import AMBIGUOUS, RESOLVED, TenantInfo
from veeam_em.models import (
    RESULT_FAILED,
    RESULT_SUCCESS,
    RESULT_WARNING,
    CloudFailoverSession,
    CloudFailoverTask,
)

EVENT_SOURCE = "cloud-failover-notifier"
DETAIL_TYPES = {
    "finished": "Cloud Failover Session Finished",
    "failed": "Cloud Failover Session Failed",
    "stuck": "Cloud Failover Session Stuck",
    "started": "Cloud Failover Session Started",
    "monitoring-gap": "Cloud Failover Monitoring Gap",
}
HEALTH_DETAIL_TYPES = {
    True: "Cloud Failover Poller Unhealthy",
    False: "Cloud Failover Poller Recovered",
}
ALERTS = (
    "finished",
    "failed",
    "stuck",
    "started",
    "recovered",
    "monitoring-gap",
    "poller-unhealthy",
    "poller-recovered",
)
SCHEMA_VERSION = "2"

SUBJECT_LIMIT = 100
SMS_SEPTETS = 160
SNS_MESSAGE_LIMIT = 256 * 1024
# What the email may take of the SNS message, counting both of its copies (under `email`
# and inside `sqs`); the rest leaves room for the other bodies, the subject and attributes.
EMAIL_WIRE_BUDGET = 180_000
# The EventBridge detail; PutEvents takes 256 KB an entry and the outbox item is also
# bounded (DynamoDB's 400 KB) with the email beside it.
DETAIL_BUDGET = 120_000
DEFAULT_BODY_LIMIT = 4_000
EM_RETENTION = timedelta(days=30)

NAME_LIMIT = 256
MESSAGE_LIMIT = 1_000
TABLE_NAME_WIDTH = 60
# Failure messages in the per-VM table, longest first; the next is tried when the failed
# and warning VMs do not all fit, so that they are shortened before any is left out.
TABLE_MESSAGE_LIMITS = (300, 120, 40, 0)
UNKNOWN = "unknown"
ABSENT = "-"

StuckReason = Literal["running-too-long", "no-progress"]

# GSM 03.38: the basic character set (one septet each) and its extension (two septets).
_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENDED = frozenset("^{}\\[~]|€\f")
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


@dataclass(frozen=True, slots=True)
class Notification:
    """One alert, rendered for every channel."""

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
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Notification:
        """Read back what `to_json` wrote."""
        return cls(**json.loads(text))


# --- Untrusted text ----------------------------------------------------------------------


def clean(value: object, limit: int = NAME_LIMIT) -> str:
    """Text from EM made safe to show: control, format and line-separator characters become
    spaces, runs of white space one space, and it is shortened to `limit` characters at a
    word boundary, marked with "...". None gives an empty string.
    """
    if value is None:
        return ""
    text = "".join(
        " " if unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch for ch in str(value)
    )
    return shorten(" ".join(text.split()), limit)


def shorten(text: str, limit: int) -> str:
    """`text` in at most `limit` characters: cut at the last word boundary that leaves room
    for "...", or mid-word only when a single word is longer than that, always marked.
    """
    if len(text) <= limit:
        return text
    if limit < 4:
        return "." * max(limit, 0)
    room = limit - 3
    head = text[: room + 1]
    cut = head.rfind(" ")
    body = head[:cut].rstrip() if cut > room // 2 else text[:room].rstrip()
    return f"{body}..."


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text)
    return "".join(
        ch if ch.isascii() and ch.isprintable() else ("" if unicodedata.combining(ch) else "?")
        for ch in folded
    )


def to_gsm(text: str) -> str:
    """`text` in GSM-7 characters only: accents dropped where GSM lacks the accented letter,
    anything else outside the alphabet replaced by "?"."""
    out: list[str] = []
    for ch in text:
        if ch in _GSM_BASIC or ch in _GSM_EXTENDED:
            out.append(ch)
            continue
        base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
        if base and all(c in _GSM_BASIC or c in _GSM_EXTENDED for c in base):
            out.append(base)
        else:
            out.append("?")
    return "".join(out)


def gsm_septets(text: str) -> int:
    """How many GSM-7 septets `text` takes; extension characters count two. Raises
    `ValueError` for a character outside GSM-7."""
    total = 0
    for ch in text:
        if ch in _GSM_BASIC:
            total += 1
        elif ch in _GSM_EXTENDED:
            total += 2
        else:
            raise ValueError(f"not a GSM-7 character: {ch!r}")
    return total


# --- Shared pieces -----------------------------------------------------------------------


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _human_time(moment: datetime | None, zone: tzinfo) -> str:
    if moment is None:
        return ABSENT
    local = moment.astimezone(zone)
    return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname() or ''}".rstrip()


def _short_time(moment: datetime, zone: tzinfo) -> str:
    local = moment.astimezone(zone)
    return f"{local:%d %b %H:%M} {local.tzname() or ''}".rstrip()


def _span(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _duration_seconds(session: CloudFailoverSession) -> int | None:
    if session.end_time is None:
        return None
    return int((session.end_time - session.creation_time).total_seconds())


def _vm_counts(session: CloudFailoverSession) -> dict[str, int]:
    counts = {"total": len(session.tasks), "success": 0, "warning": 0, "failed": 0, "other": 0}
    for task in session.tasks:
        key = task.result.lower()
        counts[key if key in ("success", "warning", "failed") else "other"] += 1
    return counts


def _counts_line(counts: dict[str, int]) -> str:
    line = (
        f"{counts['total']} in all, {counts['success']} succeeded, "
        f"{counts['warning']} with warnings, {counts['failed']} failed"
    )
    return f"{line}, {counts['other']} other" if counts["other"] else line


def _field(label: str, value: str) -> str:
    return f"{label + ':':<21}{value}"


def outcome_of(session: CloudFailoverSession) -> str:
    """`failed` for a Failed result, `finished` for Success or Warning."""
    return "failed" if session.result == RESULT_FAILED else "finished"


def dedup_key(em_host: str, session: CloudFailoverSession) -> str:
    """A key that is the same for every publication of one session's end, on every channel."""
    return f"{em_host}/{session.id}/{session.result}"


def _tenant_text(tenant: TenantInfo) -> str:
    if tenant.resolution == RESOLVED:
        return clean(tenant.name or tenant.uid) or UNKNOWN
    if tenant.resolution == AMBIGUOUS:
        names = ", ".join(clean(name, 60) for name in tenant.candidates[:5])
        more = f" and {len(tenant.candidates) - 5} more" if len(tenant.candidates) > 5 else ""
        return f"ambiguous: a plan of this name belongs to {names}{more}"
    return "unknown (no failover plan of this name is known)"


def _tenant_attribute(tenant: TenantInfo) -> str:
    if tenant.resolution == RESOLVED:
        return clean(tenant.name or tenant.uid) or UNKNOWN
    return AMBIGUOUS if tenant.resolution == AMBIGUOUS else UNKNOWN


def _subject(head: str, name: str, tail: str, *, quoted: bool = True) -> str:
    """`head "name" tail` in at most 100 printable ASCII characters, the name shortened."""
    printable = " ".join(_ascii(clean(name)).split())
    marks = '"' if quoted else ""
    room = SUBJECT_LIMIT - len(head) - len(tail) - 2 * len(marks)
    return f"{head}{marks}{shorten(printable, room)}{marks}{tail}"


# --- The per-VM table --------------------------------------------------------------------


def _wire_cost(text: str) -> int:
    """Bytes `text` adds to the SNS message: once JSON-escaped under `email`, and once
    escaped twice inside the JSON string under `sqs`."""
    once = _json(text)[1:-1]
    twice = _json(once)[1:-1]
    return len(once.encode()) + len(twice.encode())


def _table_order(tasks: tuple[CloudFailoverTask, ...]) -> tuple[list[CloudFailoverTask], ...]:
    rank = {RESULT_FAILED: 0, RESULT_WARNING: 1}
    problems = sorted(
        (task for task in tasks if task.result != RESULT_SUCCESS),
        key=lambda task: rank.get(task.result, 2),
    )
    return problems, [task for task in tasks if task.result == RESULT_SUCCESS]


def _vm_table(tasks: tuple[CloudFailoverTask, ...], budget: int) -> list[str]:
    """The per-VM lines: failed and warning VMs first, shortened before any is left out;
    then successful ones while `budget` (wire bytes) lasts, and a count of the rest."""
    if not tasks:
        return []
    problems, successes = _table_order(tasks)
    width = min(max(len(clean(task.vm_name)) for task in tasks), TABLE_NAME_WIDTH)
    width = max(width, len("VM"))

    def row(task: CloudFailoverTask, message_limit: int) -> str:
        name = shorten(clean(task.vm_name), width)
        line = f"  {name:<{width}}  {clean(task.result, 12):<8}"
        message = clean(task.failure_message, message_limit) if message_limit else ""
        return f"{line}  {message}".rstrip() + "\n"

    header = [
        f"  {'VM':<{width}}  {'Result':<8}  Message\n",
        f"  {'-' * width}  --------  -------\n",
    ]
    reserve = _wire_cost(_problems_left_out(len(tasks)) + _successes_left_out(len(tasks)))
    left = budget - sum(map(_wire_cost, header)) - reserve

    problem_rows: list[str] = []
    for limit in TABLE_MESSAGE_LIMITS:
        problem_rows = [row(task, limit) for task in problems]
        if sum(map(_wire_cost, problem_rows)) <= left:
            break
    lines = list(header)
    shown = _take_while_room(problem_rows, left)
    lines += problem_rows[:shown]
    left -= sum(map(_wire_cost, problem_rows[:shown]))
    if shown < len(problems):
        lines.append(_problems_left_out(len(problems) - shown))

    success_rows = _take_while_room((row(task, 0) for task in successes), left)
    lines += [row(task, 0) for task in successes[:success_rows]]
    if success_rows < len(successes):
        lines.append(_successes_left_out(len(successes) - success_rows))
    return lines


def _problems_left_out(count: int) -> str:
    return (
        f"  ... and {count} more VMs with warnings or failures, not listed: the message "
        "would exceed SNS's size limit (the EventBridge event and EM list them)\n"
    )


def _successes_left_out(count: int) -> str:
    return f"  ... and {count} more VMs that succeeded, not listed\n"


def _take_while_room(rows: Any, budget: int) -> int:
    taken = 0
    for text in rows:
        budget -= _wire_cost(text)
        if budget < 0:
            break
        taken += 1
    return taken


# --- Bodies ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Facts:
    """The lines of a session's notification that every body draws from."""

    headline: str
    explanation: tuple[str, ...]
    fields: tuple[tuple[str, str], ...]
    footer: tuple[tuple[str, str], ...]


def _session_facts(
    session: CloudFailoverSession,
    em_host: str,
    *,
    headline: str,
    explanation: tuple[str, ...],
    tenant: TenantInfo,
    zone: tzinfo,
    muted: bool,
    extra: tuple[tuple[str, str], ...] = (),
) -> _Facts:
    counts = _vm_counts(session)
    duration = _duration_seconds(session)
    fields = [
        ("Plan", clean(session.plan_name)),
        ("Tenant", _tenant_text(tenant)),
        ("Result", clean(session.result, 40)),
        ("Started", _human_time(session.creation_time, zone)),
        ("Ended", _human_time(session.end_time, zone)),
        ("Duration", ABSENT if duration is None else _span(duration)),
        *extra,
        ("VMs", _counts_line(counts)),
    ]
    if session.failure_message:
        fields.append(("Failure", clean(session.failure_message, MESSAGE_LIMIT)))
    if muted:
        fields.append(("Muted", "yes: this plan's notifications are muted (tests, maintenance)"))
    footer = (
        ("EM host", clean(em_host)),
        ("Backup server", clean(session.backup_server_name) or ABSENT),
        ("Session GUID", session.id),
    )
    return _Facts(headline, explanation, tuple(fields), footer)


def _email(facts: _Facts, tasks: tuple[CloudFailoverTask, ...]) -> str:
    top = [f"{facts.headline}\n", "\n"]
    if facts.explanation:
        top += [f"{line}\n" for line in facts.explanation] + ["\n"]
    top += [f"{_field(label, value)}\n" for label, value in facts.fields]
    bottom = ["\n", *(f"{_field(label, value)}\n" for label, value in facts.footer)]

    used = sum(map(_wire_cost, top + bottom))
    table = _vm_table(tasks, EMAIL_WIRE_BUDGET - used - 2 * _wire_cost("\nPer-VM outcome:\n"))
    middle = ["\n", "Per-VM outcome:\n", *table] if table else []
    return "".join(top + middle + bottom)


def _default_body(facts: _Facts, tasks: tuple[CloudFailoverTask, ...]) -> str:
    lines = [facts.headline, ""]
    if facts.explanation:
        lines += [*facts.explanation, ""]
    lines += [_field(label, value) for label, value in facts.fields]
    problems = [task for task in _table_order(tasks)[0] if task.result != "None"]
    if problems:
        names = ", ".join(clean(task.vm_name, 60) for task in problems[:10])
        more = f" and {len(problems) - 10} more" if len(problems) > 10 else ""
        lines.append(_field("VMs not succeeded", f"{names}{more}"))
    lines += [_field(label, value) for label, value in facts.footer]
    return shorten("\n".join(lines), DEFAULT_BODY_LIMIT) + "\n"


def _sms(lead: str, flexible: list[tuple[str, str | None]], tail: str) -> str:
    """`lead`, the `flexible` texts and `tail` in one GSM-7 segment. Each flexible text (a
    name from EM, untrusted) goes into its `{}` pattern; the longest is shortened first,
    always marked with "...". Only if even that is not enough is the whole cut, marked."""
    lead, tail = to_gsm(lead), to_gsm(tail)
    patterns = [to_gsm(pattern) for pattern, _ in flexible]
    texts = [to_gsm(clean(text, 80)) for _, text in flexible]
    limits = [len(text) for text in texts]

    def build() -> str:
        parts = [
            pattern.format(shorten(text, limit)) if text else ""
            for pattern, text, limit in zip(patterns, texts, limits, strict=True)
        ]
        return lead + "".join(parts) + tail

    message = build()
    while gsm_septets(message) > SMS_SEPTETS and max(limits, default=0) > 4:
        longest = limits.index(max(limits))
        limits[longest] -= 1
        message = build()
    while gsm_septets(message) > SMS_SEPTETS:
        message = message[: len(message) - 4].rstrip() + "..."
    return message


def _sms_names(session: CloudFailoverSession, tenant: TenantInfo) -> list[tuple[str, str | None]]:
    names: list[tuple[str, str | None]] = [("{}", session.plan_name)]
    if tenant.resolution == RESOLVED:
        names.append((" ({})", tenant.name or tenant.uid))
    return names


# --- Attributes and detail ---------------------------------------------------------------


def _attributes(
    *,
    event_type: str,
    key: str,
    em_host: str,
    muted: bool,
    session: CloudFailoverSession | None = None,
    tenant: TenantInfo | None = None,
) -> dict[str, str]:
    """The message attributes subscription filter policies match on, at most SNS's 10.

    Every alert has `event_type`, `em_host`, `dedup_key` and `muted`; an alert about a
    session also has `result`, `plan_name`, `tenant_name`, `backup_server`, `any_vm_failed`
    and `session_id`. A value is never empty (SNS refuses those): what EM did not give is
    "-", a tenant not pinned down is "unknown" or "ambiguous".
    """
    values = {"event_type": event_type, "em_host": em_host}
    if session is not None:
        values |= {
            "result": session.result,
            "plan_name": session.plan_name,
            "tenant_name": _tenant_attribute(tenant or TenantInfo.unknown()),
            "backup_server": session.backup_server_name or ABSENT,
            "any_vm_failed": "true" if _vm_counts(session)["failed"] else "false",
            "session_id": session.id,
        }
    values |= {"dedup_key": key, "muted": "true" if muted else "false"}
    return {name: clean(value) or ABSENT for name, value in values.items()}


def _detail_bytes(value: Any) -> int:
    """The size of `value` in the event, counted as ASCII-escaped JSON: never less than its
    UTF-8 form, so the budget holds however the channel encodes it."""
    return len(json.dumps(value, separators=(",", ":")))


def _bounded(value: str | None, limit: int = NAME_LIMIT) -> str | None:
    return None if value is None else value[:limit]


def _task_detail(task: CloudFailoverTask) -> dict[str, Any]:
    return {
        "vmName": _bounded(task.vm_name),
        "state": _bounded(task.state, 40),
        "result": _bounded(task.result, 40),
        "progress": task.progress,
        "creationTimeUtc": _iso(task.creation_time),
        "endTimeUtc": _iso(task.end_time),
        "failureMessage": _bounded(task.failure_message, MESSAGE_LIMIT),
    }


def _tasks_detail(
    tasks: tuple[CloudFailoverTask, ...], budget: int
) -> tuple[list[dict[str, Any]], int]:
    """Per-VM tasks in EM's order; when they do not all fit in `budget` bytes, the failed and
    warning ones are kept first, and the count of those left out is returned beside."""
    rendered = [_task_detail(task) for task in tasks]
    sizes = [_detail_bytes(item) + 1 for item in rendered]
    if sum(sizes) <= budget:
        return rendered, 0

    order = sorted(range(len(tasks)), key=lambda i: tasks[i].result == RESULT_SUCCESS)
    kept: set[int] = set()
    for index in order:
        if sizes[index] > budget:
            break
        budget -= sizes[index]
        kept.add(index)
    return [rendered[i] for i in sorted(kept)], len(tasks) - len(kept)


def _session_detail(
    session: CloudFailoverSession,
    em_host: str,
    *,
    alert: str,
    outcome: str,
    key: str,
    tenant: TenantInfo,
    muted: bool,
    recovered_from: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "schemaVersion": SCHEMA_VERSION,
        "alert": alert,
        "dedupKey": key,
        "outcome": outcome,
        "emHost": em_host,
        "sessionId": session.id,
        "sessionUid": session.uid,
        "name": _bounded(session.name),
        "planName": _bounded(session.plan_name),
        "plan": {"name": _bounded(session.plan_name), "uid": tenant.plan_uid},
        "tenant": (
            {"name": _bounded(tenant.name), "uid": _bounded(tenant.uid)}
            if tenant.resolution == RESOLVED
            else None
        ),
        "tenantResolution": tenant.resolution,
        "tenantCandidates": [_bounded(name) for name in tenant.candidates[:20]],
        "muted": muted,
        "recoveredFrom": recovered_from,
        "jobType": _bounded(session.job_type, 40),
        "backupServer": _bounded(session.backup_server_name),
        "state": _bounded(session.state, 40),
        "result": _bounded(session.result, 40),
        "progress": session.progress,
        "creationTimeUtc": _iso(session.creation_time),
        "endTimeUtc": _iso(session.end_time),
        "durationSeconds": _duration_seconds(session),
        "failureMessage": _bounded(session.failure_message, MESSAGE_LIMIT),
        "vmCounts": _vm_counts(session),
        **(extra or {}),
    }
    room = DETAIL_BUDGET - _detail_bytes(detail)
    detail["tasks"], detail["tasksOmitted"] = _tasks_detail(session.tasks, room)
    return detail


# --- Renderers ---------------------------------------------------------------------------


def render(
    session: CloudFailoverSession,
    em_host: str,
    *,
    tenant: TenantInfo | None = None,
    time_zone: tzinfo = UTC,
    muted: bool = False,
    recovered_from: str | None = None,
) -> Notification:
    """Render the notification for a session that has just finished or failed.

    `recovered_from` is the GUID of the failed session of the same plan that this
    successful (or warning) one follows: the notification then says the plan recovered.
    """
    tenant = tenant or TenantInfo.unknown()
    outcome = outcome_of(session)
    recovered = recovered_from is not None and outcome == "finished"
    alert = "recovered" if recovered else outcome
    key = dedup_key(em_host, session)
    verb = {RESULT_SUCCESS: "succeeded", RESULT_FAILED: "FAILED"}.get(
        session.result, "finished with warnings"
    )

    explanation: tuple[str, ...] = ()
    headline = f"Cloud failover {verb}: {clean(session.plan_name)}"
    subject_tail = f" {verb}"
    if recovered:
        headline = f"Cloud failover plan RECOVERED ({verb}): {clean(session.plan_name)}"
        explanation = (
            "The plan's previous session failed; this one "
            f"{verb}. It follows the failed session {recovered_from}.",
        )
        subject_tail = f" {verb}: recovered"

    facts = _session_facts(
        session,
        em_host,
        headline=headline,
        explanation=explanation,
        tenant=tenant,
        zone=time_zone,
        muted=muted,
        extra=(("Recovered from", str(recovered_from)),) if recovered else (),
    )
    counts = _vm_counts(session)
    vm_summary = f" {counts['failed']}/{counts['total']} VMs failed." if counts["failed"] else ""
    if not counts["failed"] and counts["total"]:
        vm_summary = f" {counts['total']} VMs."
    ended = session.end_time or session.creation_time
    sms_kind = {"failed": "Failover FAILED", "recovered": "Failover RECOVERED"}.get(
        alert, f"Failover {verb}"
    )
    sms = _sms(
        f"{sms_kind}: ",
        _sms_names(session, tenant),
        f".{vm_summary} Ended {_short_time(ended, time_zone)}. {session.id[:8]}",
    )
    return _notification(
        key=key,
        outcome=outcome,
        session_id=session.id,
        subject=_subject("Cloud failover ", session.plan_name, subject_tail),
        facts=facts,
        tasks=session.tasks,
        sms=sms,
        attributes=_attributes(
            event_type=f"failover.{alert}",
            key=key,
            em_host=em_host,
            muted=muted,
            session=session,
            tenant=tenant,
        ),
        detail_type=DETAIL_TYPES[outcome],
        detail=_session_detail(
            session,
            em_host,
            alert=alert,
            outcome=outcome,
            key=key,
            tenant=tenant,
            muted=muted,
            recovered_from=recovered_from if recovered else None,
        ),
    )


def render_stuck(
    session: CloudFailoverSession,
    em_host: str,
    *,
    reason: StuckReason,
    threshold: timedelta,
    now: datetime,
    tenant: TenantInfo | None = None,
    time_zone: tzinfo = UTC,
    muted: bool = False,
) -> Notification:
    """Render the one alert for a session still running after `threshold`
    (`running-too-long`), or whose progress has not moved for `threshold` (`no-progress`).
    Its finish is still notified as usual, under another dedup key.
    """
    tenant = tenant or TenantInfo.unknown()
    key = f"{em_host}/{session.id}/stuck"
    running = max((now - session.creation_time).total_seconds(), 0.0)
    if reason == "no-progress":
        why = f"its progress has not moved for {_span(threshold.total_seconds())}"
        short_why = "no progress"
    else:
        why = f"it is still running after {_span(running)}"
        short_why = f"running {_span(running)}"
    progress = ABSENT if session.progress is None else f"{session.progress}%"
    facts = _session_facts(
        session,
        em_host,
        headline=f"Cloud failover may be STUCK: {clean(session.plan_name)}",
        explanation=(
            f"The session has not finished and {why} (threshold "
            f"{_span(threshold.total_seconds())}). Check it in the Veeam console; its end "
            "will still be notified.",
        ),
        tenant=tenant,
        zone=time_zone,
        muted=muted,
        extra=(
            ("State", clean(session.state, 40)),
            ("Progress", progress),
            ("Running for", _span(running)),
        ),
    )
    sms = _sms(
        "Failover STUCK: ",
        _sms_names(session, tenant),
        f": {short_why}, started {_short_time(session.creation_time, time_zone)}. {session.id[:8]}",
    )
    return _notification(
        key=key,
        outcome="stuck",
        session_id=session.id,
        subject=_subject("Cloud failover ", session.plan_name, " may be stuck"),
        facts=facts,
        tasks=session.tasks,
        sms=sms,
        attributes=_attributes(
            event_type="failover.stuck",
            key=key,
            em_host=em_host,
            muted=muted,
            session=session,
            tenant=tenant,
        ),
        detail_type=DETAIL_TYPES["stuck"],
        detail=_session_detail(
            session,
            em_host,
            alert="stuck",
            outcome="stuck",
            key=key,
            tenant=tenant,
            muted=muted,
            extra={
                "stuck": {
                    "reason": reason,
                    "thresholdSeconds": int(threshold.total_seconds()),
                    "runningSeconds": int(running),
                },
                "timeUtc": _iso(now),
            },
        ),
    )


def render_started(
    session: CloudFailoverSession,
    em_host: str,
    *,
    tenant: TenantInfo | None = None,
    time_zone: tzinfo = UTC,
    muted: bool = False,
) -> Notification:
    """Render the alert for a session first seen running."""
    tenant = tenant or TenantInfo.unknown()
    key = f"{em_host}/{session.id}/started"
    facts = _session_facts(
        session,
        em_host,
        headline=f"Cloud failover started: {clean(session.plan_name)}",
        explanation=("A cloud failover session is running; its end will be notified.",),
        tenant=tenant,
        zone=time_zone,
        muted=muted,
        extra=(("State", clean(session.state, 40)),),
    )
    sms = _sms(
        "Failover started: ",
        _sms_names(session, tenant),
        f" at {_short_time(session.creation_time, time_zone)}. {session.id[:8]}",
    )
    return _notification(
        key=key,
        outcome="started",
        session_id=session.id,
        subject=_subject("Cloud failover ", session.plan_name, " started"),
        facts=facts,
        tasks=session.tasks,
        sms=sms,
        attributes=_attributes(
            event_type="failover.started",
            key=key,
            em_host=em_host,
            muted=muted,
            session=session,
            tenant=tenant,
        ),
        detail_type=DETAIL_TYPES["started"],
        detail=_session_detail(
            session,
            em_host,
            alert="started",
            outcome="started",
            key=key,
            tenant=tenant,
            muted=muted,
        ),
    )


def render_monitoring_gap(
    em_host: str,
    *,
    last_poll_at: datetime,
    now: datetime,
    retention: timedelta = EM_RETENTION,
    time_zone: tzinfo = UTC,
) -> Notification:
    """Render the alert for a poller that was down longer than EM keeps sessions: those
    that ended between `last_poll_at` and `now - retention` may never be notified."""
    key = f"{em_host}/monitoring-gap/{_iso(last_poll_at)}"
    missed_until = now - retention
    host = clean(em_host)
    gap = _span((now - last_poll_at).total_seconds())
    lines = [
        f"The cloud failover notifier did not poll EM {host} for {gap}.",
        f"EM keeps failover sessions for {retention.days} days, so sessions that ended "
        f"between {_human_time(last_poll_at, time_zone)} and "
        f"{_human_time(missed_until, time_zone)} may have been missed.",
        "Sessions that ended since then are notified as usual. Check the history of that "
        "period in the Veeam console.",
        "",
        _field("Last poll", _human_time(last_poll_at, time_zone)),
        _field("Polling again", _human_time(now, time_zone)),
        _field("EM host", host),
    ]
    body = "\n".join(lines) + "\n"
    sms = _sms(
        "Failover notifier gap: EM ",
        [("{}", host)],
        f" not polled since {_short_time(last_poll_at, time_zone)}; failovers may be missed.",
    )
    return Notification(
        dedup_key=key,
        outcome="monitoring.gap",
        session_id="",
        subject=_subject(
            "Failover notifier may have missed sessions on EM ", em_host, "", quoted=False
        ),
        message=body,
        attributes=_attributes(event_type="monitoring.gap", key=key, em_host=em_host, muted=False),
        detail_type=DETAIL_TYPES["monitoring-gap"],
        detail={
            "schemaVersion": SCHEMA_VERSION,
            "alert": "monitoring-gap",
            "dedupKey": key,
            "emHost": em_host,
            "muted": False,
            "lastPollUtc": _iso(last_poll_at),
            "timeUtc": _iso(now),
            "gapSeconds": int((now - last_poll_at).total_seconds()),
            "retentionDays": retention.days,
            "possiblyMissedFromUtc": _iso(last_poll_at),
            "possiblyMissedUntilUtc": _iso(missed_until),
        },
        variants={"default": body, "email": body, "sms": sms},
    )


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
    time_zone: tzinfo = UTC,
) -> Notification:
    """Render the poller's own health change: it went blind on an EM, or sees it again."""
    episode = _iso(failing_since or now)
    state = "unhealthy" if unhealthy else "recovered"
    key = f"{em_host}/poller/{state}/{episode}"
    host = clean(em_host)
    if unhealthy:
        subject = _subject("Failover notifier cannot poll EM ", em_host, "", quoted=False)
        lines = [
            f"The cloud failover notifier has not been able to poll EM {host} "
            f"for {failed_polls} polls in a row.",
            "Failovers that finish meanwhile are notified once it can poll again.",
            "",
            _field("Failing since", _human_time(failing_since, time_zone)),
            _field("Failure", clean(failure, 80) or ABSENT),
            _field("Last error", clean(error, MESSAGE_LIMIT) or ABSENT),
        ]
        if next_attempt_at is not None:
            lines.append(_field("Next logon attempt", _human_time(next_attempt_at, time_zone)))
        sms = _sms("Failover notifier cannot poll EM ", [("{}", host)], f": {clean(failure, 20)}.")
    else:
        subject = _subject("Failover notifier polls EM ", em_host, " again", quoted=False)
        lines = [
            f"The cloud failover notifier polls EM {host} again.",
            "",
            f"It could not poll from {_human_time(failing_since, time_zone)} "
            f"to {_human_time(now, time_zone)}.",
        ]
        sms = _sms("Failover notifier polls EM ", [("{}", host)], " again.")
    body = "\n".join(lines) + "\n"
    return Notification(
        dedup_key=key,
        outcome=f"poller.{state}",
        session_id="",
        subject=subject,
        message=body,
        attributes=_attributes(event_type=f"poller.{state}", key=key, em_host=em_host, muted=False),
        detail_type=HEALTH_DETAIL_TYPES[unhealthy],
        detail={
            "schemaVersion": SCHEMA_VERSION,
            "alert": f"poller-{state}",
            "dedupKey": key,
            "emHost": em_host,
            "muted": False,
            "state": state,
            "failingSinceUtc": episode,
            "failedPolls": failed_polls,
            "failure": _bounded(failure, 80),
            "error": _bounded(error, MESSAGE_LIMIT),
            "nextAttemptUtc": _iso(next_attempt_at),
            "timeUtc": _iso(now),
        },
        variants={"default": body, "email": body, "sms": sms},
    )


def _notification(
    *,
    key: str,
    outcome: str,
    session_id: str,
    subject: str,
    facts: _Facts,
    tasks: tuple[CloudFailoverTask, ...],
    sms: str,
    attributes: dict[str, str],
    detail_type: str,
    detail: dict[str, Any],
) -> Notification:
    default = _default_body(facts, tasks)
    return Notification(
        dedup_key=key,
        outcome=outcome,
        session_id=session_id,
        subject=subject,
        message=default,
        attributes=attributes,
        detail_type=detail_type,
        detail=detail,
        variants={"default": default, "email": _email(facts, tasks), "sms": sms},
    )
