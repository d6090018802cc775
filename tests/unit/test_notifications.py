"""A finished or failed session renders into a message a person can act on."""

from __future__ import annotations

from datetime import timedelta

from failover_poller.notifications import (
    Notification,
    render,
    render_monitoring_gap,
    render_started,
    render_stuck,
)
from failover_poller.plans import TenantInfo, resolve
from tests.fakes import FIXTURES, load_session
from veeam_em.models import CloudFailoverSession, CloudFailoverTask
from veeam_em.parser import parse_failover_plans

HOST = "em01.example.test:9398"
PLANS = FIXTURES / "em" / "query-result-failover-plans-entities.xml"
FAILED_BEFORE = "5d3e8f21-7a6b-4c19-9e2d-1f0a8b7c6d53"


def tenant_of(plan_name: str) -> TenantInfo:
    """The tenant EM's plans (a fixture page) give this plan name."""
    return resolve(parse_failover_plans(PLANS.read_bytes(), str(PLANS)).plans, plan_name)


def failed_session() -> CloudFailoverSession:
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


def test_the_email_carries_what_an_operator_needs() -> None:
    notification = render(failed_session(), HOST, tenant=tenant_of("Contoso Failover Plan"))
    assert notification.variants is not None
    email = notification.variants["email"]

    for fact in (
        "Cloud failover FAILED: Contoso Failover Plan",
        "Tenant:              Contoso Ltd",
        "Result:              Failed",
        "2025-03-10 20:29:45 UTC",
        "Duration:            12m 05s",
        "1 of 2 VMs failed",
        HOST,
        "4be1d766-bf90-465a-8df1-2b949f7be762",
        "vbr-sp01.example.test",
    ):
        assert fact in email
    assert email.index("db-vm-02") < email.index("app-vm-01")  # failed VMs first
    assert "db-vm-02   Failed    No free memory" in email


def test_the_default_body_is_short_and_names_the_vms_that_did_not_succeed() -> None:
    notification = render(failed_session(), HOST)

    assert notification.message == notification.variants["default"]  # type: ignore[index]
    assert "VMs not succeeded:   db-vm-02" in notification.message
    assert "Per-VM outcome" not in notification.message


def test_attributes_let_subscribers_filter() -> None:
    attributes = render(
        failed_session(), HOST, tenant=tenant_of("Contoso Failover Plan")
    ).attributes

    assert attributes == {
        "event_type": "failover.failed",
        "result": "Failed",
        "plan_name": "Contoso Failover Plan",
        "tenant_name": "Contoso Ltd",
        "em_host": HOST,
        "backup_server": "vbr-sp01.example.test",
        "any_vm_failed": "true",
        "session_id": "4be1d766-bf90-465a-8df1-2b949f7be762",
        "dedup_key": f"{HOST}/4be1d766-bf90-465a-8df1-2b949f7be762/Failed",
        "muted": "false",
    }


def test_the_event_detail_keeps_em_words_and_utc_times() -> None:
    detail = render(failed_session(), HOST).detail

    assert detail["schemaVersion"] == "2"
    assert detail["alert"] == "failed"
    assert detail["result"] == "Failed"
    assert detail["state"] == "Stopped"
    assert detail["creationTimeUtc"] == "2025-03-10T20:29:45.077000Z"
    assert detail["durationSeconds"] == 725
    assert [task["result"] for task in detail["tasks"]] == ["Success", "Failed"]
    assert detail["vmCounts"] == {"total": 2, "success": 1, "warning": 0, "failed": 1, "other": 0}


def test_an_ambiguous_plan_name_is_reported_not_guessed() -> None:
    session = load_session("failover-session-stopped-success.xml", name="Quarterly DR Test")

    notification = render(session, HOST, tenant=tenant_of("Quarterly DR Test"))

    assert notification.detail["tenant"] is None
    assert notification.detail["tenantResolution"] == "ambiguous"
    assert notification.detail["tenantCandidates"] == ["Contoso Ltd", "Fabrikam Inc"]
    assert notification.attributes["tenant_name"] == "ambiguous"
    assert (
        "ambiguous: a plan of this name belongs to Contoso Ltd, Fabrikam Inc"
        in (
            notification.variants["email"]  # type: ignore[index]
        )
    )


def test_a_plan_unknown_to_em_says_so() -> None:
    notification = render(load_session("failover-session-stopped-success.xml"), HOST)

    assert notification.detail["tenantResolution"] == "unknown"
    assert notification.attributes["tenant_name"] == "unknown"


def test_a_success_after_a_failure_says_the_plan_recovered() -> None:
    session = load_session("failover-session-stopped-success.xml")

    notification = render(session, HOST, recovered_from=FAILED_BEFORE)

    assert notification.subject.endswith("succeeded: recovered")
    assert f"It follows the failed session {FAILED_BEFORE}" in notification.message
    assert notification.detail["alert"] == "recovered"
    assert notification.detail["recoveredFrom"] == FAILED_BEFORE
    assert notification.detail_type == "Cloud Failover Session Finished"
    assert notification.attributes["event_type"] == "failover.recovered"
    assert notification.dedup_key == render(session, HOST).dedup_key


def test_a_failure_is_never_called_a_recovery() -> None:
    notification = render(failed_session(), HOST, recovered_from=FAILED_BEFORE)

    assert notification.detail["alert"] == "failed"
    assert notification.detail["recoveredFrom"] is None


def test_a_muted_plan_is_marked_on_every_channel() -> None:
    notification = render(failed_session(), HOST, muted=True)

    assert notification.attributes["muted"] == "true"
    assert notification.detail["muted"] is True
    assert "Muted:" in notification.variants["email"]  # type: ignore[index]


def test_stuck_started_and_gap_alerts_have_their_own_types_and_keys() -> None:
    running = load_session("failover-session-working.xml")
    now = running.creation_time + timedelta(hours=7)

    stuck = render_stuck(
        running, HOST, reason="running-too-long", threshold=timedelta(hours=6), now=now
    )
    started = render_started(running, HOST)
    gap = render_monitoring_gap(HOST, last_poll_at=now - timedelta(days=40), now=now)

    assert [n.detail_type for n in (stuck, started, gap)] == [
        "Cloud Failover Session Stuck",
        "Cloud Failover Session Started",
        "Cloud Failover Monitoring Gap",
    ]
    assert [n.attributes["event_type"] for n in (stuck, started, gap)] == [
        "failover.stuck",
        "failover.started",
        "monitoring.gap",
    ]
    assert len({stuck.dedup_key, started.dedup_key, gap.dedup_key}) == 3
    assert stuck.subject == 'Cloud failover "Contoso Failover Plan" may be stuck'
    assert "still running after 7h 00m 00s (threshold 6h 00m 00s)" in stuck.message
    assert stuck.detail["stuck"] == {
        "reason": "running-too-long",
        "thresholdSeconds": 21600,
        "runningSeconds": 25200,
    }
    assert gap.detail["possiblyMissedUntilUtc"] == "2025-02-09T03:29:45.077000Z"


def test_the_subject_is_short_printable_ascii_whatever_the_plan_name() -> None:
    name = "Plän für den Notfall\n" + "x" * 300
    subject = render(load_session("failover-session-stopped-success.xml", name=name), HOST).subject

    assert len(subject) <= 100
    assert subject.isascii()
    assert subject.isprintable()
    assert subject.endswith("succeeded")


def test_a_notification_survives_the_outbox_round_trip() -> None:
    notification = render(failed_session(), HOST, tenant=tenant_of("Contoso Failover Plan"))

    assert Notification.from_json(notification.to_json()) == notification
