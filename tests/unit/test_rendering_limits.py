"""Whatever EM names things, and however many VMs a plan has, each channel's message fits
its medium: limits are asserted on the bytes actually published."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from failover_poller.channels import sns_message
from failover_poller.notifications import (
    EVENT_SOURCE,
    Notification,
    clean,
    gsm_septets,
    render,
    render_health,
    render_monitoring_gap,
    render_started,
    render_stuck,
    shorten,
    to_gsm,
)
from failover_poller.plans import TenantInfo
from tests.fakes import FIXTURES, load_session
from veeam_em.models import CloudFailoverSession, CloudFailoverTask

HOST = "em01.example.test:9398"
HOSTILE = json.loads((FIXTURES / "rendering" / "hostile-names.json").read_text())
SNS_LIMIT = 256 * 1024
EVENTBRIDGE_ENTRY_LIMIT = 256 * 1024
DYNAMODB_ITEM_LIMIT = 400 * 1024
NOW = datetime(2026, 6, 16, 12, 0, tzinfo=UTC)


def published_bytes(notification: Notification) -> int:
    """What SNS counts against its limit for the message the SNS adapter publishes: the
    message, the subject and the attributes."""
    attributes = sum(
        len(name.encode()) + len("String") + len(value.encode())
        for name, value in notification.attributes.items()
    )
    message = sns_message(notification)[0].encode()
    return len(message) + len(notification.subject.encode()) + attributes


def event_entry_bytes(notification: Notification) -> int:
    """The PutEvents entry's size, with the detail ASCII-escaped (its largest encoding)."""
    detail = json.dumps(notification.detail, separators=(",", ":"))
    return len(EVENT_SOURCE) + len(notification.detail_type) + len(detail.encode())


def named(name: str) -> TenantInfo:
    return TenantInfo("resolved", name=name, uid="urn:veeam:CloudTenant:1", plan_uid="urn:p")


def plan_with_vms(name: str, results: list[tuple[str, str, str | None]]) -> CloudFailoverSession:
    """The failed sample session, with these (VM name, result, failure message) tasks."""
    base = load_session("failover-session-stopped-failed.xml", name=name)
    tasks = tuple(
        CloudFailoverTask(vm, "Stopped", result, 100, base.creation_time, base.end_time, why, None)
        for vm, result, why in results
    )
    return CloudFailoverSession(**{**_fields(base), "tasks": tasks})


def _fields(session: CloudFailoverSession) -> dict[str, object]:
    return {name: getattr(session, name) for name in session.__dataclass_fields__}


def every_alert(name: str) -> list[Notification]:
    """One notification of each kind, with `name` wherever EM's text goes."""
    failed = plan_with_vms(name, [(name, "Failed", name), (f"{name}-2", "Success", None)])
    failed = CloudFailoverSession(**{**_fields(failed), "failure_message": name})
    running = load_session("failover-session-working.xml", name=name, backup_server_name=name)
    succeeded = load_session("failover-session-stopped-success.xml", name=name)
    return [
        render(failed, HOST, tenant=named(name)),
        render(succeeded, HOST, tenant=named(name), recovered_from=failed.id),
        render_stuck(
            running, HOST, reason="no-progress", threshold=timedelta(hours=2), now=NOW,
            tenant=named(name),
        ),
        render_started(running, HOST, tenant=TenantInfo("ambiguous", candidates=(name, name))),
        render_monitoring_gap(HOST, last_poll_at=NOW - timedelta(days=45), now=NOW),
        render_health(
            HOST, unhealthy=True, failing_since=NOW, failed_polls=3, failure="tls",
            error=name, next_attempt_at=None, now=NOW,
        ),
    ]  # fmt: skip


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_the_subject_is_at_most_100_printable_ascii_characters(case: str) -> None:
    for notification in every_alert(HOSTILE[case]):
        subject = notification.subject

        assert 0 < len(subject.encode()) <= 100
        assert subject.isascii() and subject.isprintable()
        assert "\n" not in subject and "\r" not in subject


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_the_sms_fits_one_gsm_7_segment(case: str) -> None:
    for notification in every_alert(HOSTILE[case]):
        assert notification.variants is not None
        sms = notification.variants["sms"]

        assert gsm_septets(sms) <= 160  # raises on any character outside GSM-7
        assert sms.strip()


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_no_control_or_direction_character_from_em_reaches_a_person(case: str) -> None:
    for notification in every_alert(HOSTILE[case]):
        assert notification.variants is not None
        for body in (*notification.variants.values(), notification.subject):
            unsafe = {
                ch for ch in body if ch != "\n" and unicodedata.category(ch) in ("Cc", "Cf", "Zl")
            }
            assert unsafe == set()


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_attributes_are_bounded_non_empty_strings(case: str) -> None:
    for notification in every_alert(HOSTILE[case]):
        attributes = notification.attributes

        assert len(attributes) <= 10  # SNS takes at most 10 message attributes
        assert all(isinstance(value, str) and value.strip() for value in attributes.values())
        assert all(len(value) <= 256 for value in attributes.values())
        assert all(value.isprintable() for value in attributes.values())


def test_a_shortened_name_in_an_sms_is_marked_never_cut_silently() -> None:
    name = HOSTILE["long_accented"].strip()
    sms = every_alert(name)[0].variants["sms"]  # type: ignore[index]

    plan_part = sms.removeprefix("Failover FAILED: ").split(" (")[0]
    assert plan_part.endswith("...")
    assert to_gsm(name).startswith(plan_part.removesuffix("..."))
    assert (
        name.split()[len(plan_part.removesuffix("...").split()) - 1]
        == (plan_part.removesuffix("...").split()[-1])
    )


def test_gsm_extension_characters_count_twice() -> None:
    assert gsm_septets("{}") == 4
    assert gsm_septets("€uro") == 5
    assert gsm_septets("Plän") == 4
    assert to_gsm("Łódź café ç 🚀") == "?odz café c ?"


def test_shortening_cuts_at_a_word_and_marks_it() -> None:
    assert shorten("Northwind Failover Plan", 15) == "Northwind..."
    assert shorten("Supercalifragilistic", 10) == "Superca..."
    assert shorten("short", 10) == "short"


def test_clean_drops_control_characters_and_bounds_length() -> None:
    text = clean(HOSTILE["control_characters"], 40)

    assert text == "Evil Bcc: attacker@example.com [31m..."
    assert len(clean("x" * 1000)) == 256


def test_5000_vms_with_long_names_fit_and_no_failed_vm_is_dropped() -> None:
    long_name = HOSTILE["long_accented"][:70]
    vms = [(f"{long_name} {index:04d}", "Success", None) for index in range(5000)]
    failing = range(0, 5000, 100)
    for index in failing:
        vms[index] = (vms[index][0], "Failed", HOSTILE["emoji"])
    vms[4999] = (vms[4999][0], "Warning", "No heartbeat")

    notification = render(plan_with_vms(HOSTILE["cjk"], vms), HOST, tenant=named("Contoso"))
    email = notification.variants["email"]  # type: ignore[index]

    assert published_bytes(notification) < SNS_LIMIT
    assert event_entry_bytes(notification) < EVENTBRIDGE_ENTRY_LIMIT
    assert len(notification.to_json().encode()) < DYNAMODB_ITEM_LIMIT - 50 * 1024
    listed = [line for line in email.splitlines() if " Failed " in line or " Warning " in line]
    assert len(listed) == len(failing) + 1
    assert listed[0].strip().startswith(clean(vms[0][0], 60)[:40])
    assert "more VMs that succeeded, not listed" in email
    assert notification.detail["vmCounts"]["total"] == 5000


@pytest.mark.parametrize("case", ["one_long_word", "cjk", "emoji", "quotes_and_markup"])
def test_5000_failed_vms_shorten_their_messages_then_say_how_many_are_left_out(case: str) -> None:
    name = HOSTILE[case]
    vms = [(f"{name[:50]}-{index:04d}", "Failed", name) for index in range(5000)]

    notification = render(plan_with_vms(name, vms), HOST, tenant=named(name))
    email = notification.variants["email"]  # type: ignore[index]
    detail = notification.detail

    assert published_bytes(notification) < SNS_LIMIT
    assert event_entry_bytes(notification) < EVENTBRIDGE_ENTRY_LIMIT
    assert "more VMs with warnings or failures, not listed" in email
    assert detail["tasksOmitted"] + len(detail["tasks"]) == 5000
    assert detail["tasksOmitted"] > 0


def test_a_few_failed_vms_keep_their_whole_failure_messages() -> None:
    message = "Failed to power on the replica: not enough memory on host esx-cc02.example.test."
    vms = [("sql-vm-01", "Failed", message), ("app-vm-03", "Success", None)]

    email = render(plan_with_vms("Plan", vms), HOST).variants["email"]  # type: ignore[index]

    assert message in email
    assert email.index("sql-vm-01") < email.index("app-vm-03")


def test_times_for_people_are_local_and_the_event_stays_utc() -> None:
    session = load_session("failover-session-stopped-failed.xml")

    notification = render(session, HOST, time_zone=ZoneInfo("America/New_York"))

    assert notification.variants is not None
    assert "Started:             2026-06-16 02:33:10 EDT" in notification.variants["email"]
    assert "16 Jun 02:41 EDT" in notification.variants["sms"]
    assert notification.detail["creationTimeUtc"] == "2026-06-16T06:33:10.659559Z"


def test_the_sns_message_carries_every_body_and_a_copy_for_queues() -> None:
    notification = render(load_session("failover-session-stopped-failed.xml"), HOST)

    message, structure = sns_message(notification)

    assert structure == "json"
    assert set(json.loads(message)) == {"default", "email", "sms", "sqs"}
    assert json.loads(json.loads(message)["sqs"]) == notification.variants
    assert json.loads(message)["default"] == notification.message
