"""A finished or failed session renders into a message a person can act on."""

from __future__ import annotations

from datetime import timedelta

from failover_poller.notifications import Notification, render
from tests.fakes import load_session
from veeam_em.models import CloudFailoverTask

HOST = "em01.example.test:9398"


def failed_session():  # type: ignore[no-untyped-def]
    working = load_session("failover-session-working.xml")
    end = working.creation_time + timedelta(minutes=12, seconds=5)
    tasks = (
        CloudFailoverTask("app-vm-01", "Stopped", "Success", 100, None, end, None, None),
        CloudFailoverTask("db-vm-02", "Stopped", "Failed", 100, None, end, "No free memory", None),
    )
    return load_session(
        "failover-session-working.xml",
        state="Stopped",
        result="Failed",
        end_time=end,
        failure_message="1 of 2 VMs failed",
        tasks=tasks,
    )


def test_the_message_carries_what_an_operator_needs() -> None:
    notification = render(failed_session(), HOST)

    for fact in (
        "Contoso Failover Plan",
        "Result:              Failed",
        "2025-03-10 20:29:45 UTC",
        "Duration:            12m 05s",
        "db-vm-02: Failed (No free memory)",
        "1 of 2 VMs failed",
        HOST,
        "4be1d766-bf90-465a-8df1-2b949f7be762",
        "vbr-sp01.example.test",
    ):
        assert fact in notification.message


def test_attributes_let_subscribers_filter() -> None:
    attributes = render(failed_session(), HOST).attributes

    assert attributes["session_id"] == "4be1d766-bf90-465a-8df1-2b949f7be762"
    assert attributes["result"] == "Failed"
    assert attributes["event_type"] == "failover.failed"
    assert attributes["any_vm_failed"] == "true"
    assert attributes["dedup_key"] == f"{HOST}/4be1d766-bf90-465a-8df1-2b949f7be762/Failed"


def test_the_event_detail_keeps_em_words_and_utc_times() -> None:
    detail = render(failed_session(), HOST).detail

    assert detail["result"] == "Failed"
    assert detail["state"] == "Stopped"
    assert detail["creationTimeUtc"] == "2025-03-10T20:29:45.077000Z"
    assert detail["durationSeconds"] == 725
    assert [task["result"] for task in detail["tasks"]] == ["Success", "Failed"]
    assert detail["vmCounts"] == {"total": 2, "success": 1, "warning": 0, "failed": 1, "other": 0}


def test_the_subject_is_short_printable_ascii_whatever_the_plan_name() -> None:
    name = "Plän für den Notfall\n" + "x" * 300
    subject = render(load_session("failover-session-stopped-success.xml", name=name), HOST).subject

    assert len(subject) <= 100
    assert subject.isascii()
    assert subject.isprintable()
    assert subject.endswith("succeeded")


def test_a_notification_survives_the_outbox_round_trip() -> None:
    notification = render(failed_session(), HOST)

    assert Notification.from_json(notification.to_json()) == notification
