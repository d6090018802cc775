"""Every event the notifier can put on its bus, and every sample of one in `events/`,
validates against the published JSON Schema of the detail."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from failover_poller.notifications import (
    ALERTS,
    DETAIL_TYPES,
    HEALTH_DETAIL_TYPES,
    Notification,
    render,
    render_health,
    render_monitoring_gap,
    render_started,
    render_stuck,
)
from failover_poller.plans import TenantInfo
from tests.fakes import load_session

EVENTS = Path(__file__).parents[2] / "events"
SCHEMA = json.loads((EVENTS / "failover-notification.schema.json").read_text())
HOST = "em01.example.test:9398"
NOW = datetime(2026, 6, 16, 12, 0, tzinfo=UTC)
CONTOSO = TenantInfo("resolved", "Contoso Ltd", "urn:veeam:CloudTenant:2e7c", "urn:veeam:p:1")
AMBIGUOUS = TenantInfo("ambiguous", candidates=("Contoso Ltd", "Fabrikam Inc"))


def every_kind() -> dict[str, Notification]:
    succeeded = load_session("failover-session-stopped-success.xml")
    failed = load_session("failover-session-stopped-failed.xml")
    running = load_session("failover-session-working.xml")
    return {
        "finished": render(succeeded, HOST, tenant=CONTOSO),
        "failed": render(failed, HOST, tenant=AMBIGUOUS, muted=True),
        "recovered": render(succeeded, HOST, recovered_from=failed.id),
        "stuck": render_stuck(
            running, HOST, reason="running-too-long", threshold=timedelta(hours=6), now=NOW
        ),
        "started": render_started(running, HOST, tenant=CONTOSO),
        "monitoring-gap": render_monitoring_gap(
            HOST, last_poll_at=NOW - timedelta(days=31), now=NOW
        ),
        "poller-unhealthy": render_health(
            HOST, unhealthy=True, failing_since=NOW, failed_polls=3, failure="tls",
            error="certificate verify failed", next_attempt_at=NOW, now=NOW,
        ),
        "poller-recovered": render_health(
            HOST, unhealthy=False, failing_since=NOW - timedelta(hours=1), failed_polls=0,
            failure=None, error=None, next_attempt_at=None, now=NOW,
        ),
    }  # fmt: skip


def errors(detail: dict[str, Any]) -> list[str]:
    return [error.message for error in Draft202012Validator(SCHEMA).iter_errors(detail)]


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(SCHEMA)

    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("alert", ALERTS)
def test_every_emitted_kind_validates(alert: str) -> None:
    notification = every_kind()[alert]

    assert notification.detail["alert"] == alert
    assert errors(notification.detail) == []


@pytest.mark.parametrize("sample", sorted(EVENTS.glob("notification-eventbridge-*.json")))
def test_every_sample_in_events_validates(sample: Path) -> None:
    event = json.loads(sample.read_text())

    assert errors(event["detail"]) == []


def test_each_kind_has_the_detail_type_its_alert_promises() -> None:
    detail_types = {alert: n.detail_type for alert, n in every_kind().items()}

    assert detail_types == {
        "finished": DETAIL_TYPES["finished"],
        "failed": DETAIL_TYPES["failed"],
        "recovered": DETAIL_TYPES["finished"],
        "stuck": DETAIL_TYPES["stuck"],
        "started": DETAIL_TYPES["started"],
        "monitoring-gap": DETAIL_TYPES["monitoring-gap"],
        "poller-unhealthy": HEALTH_DETAIL_TYPES[True],
        "poller-recovered": HEALTH_DETAIL_TYPES[False],
    }


def test_the_schema_rejects_a_detail_that_drifts() -> None:
    detail = every_kind()["failed"].detail

    renamed = {("end_time_utc" if k == "endTimeUtc" else k): v for k, v in detail.items()}
    local_time = {**detail, "creationTimeUtc": "2026-06-16T08:33:10+02:00"}
    recovered_without_origin = {**every_kind()["recovered"].detail, "recoveredFrom": None}

    assert errors(renamed)
    assert errors(local_time)
    assert errors(recovered_without_origin)


def test_every_time_in_every_event_is_utc_with_a_z() -> None:
    for notification in every_kind().values():
        times = [v for k, v in notification.detail.items() if k.endswith("Utc") and v]

        assert times
        assert all(isinstance(t, str) and t.endswith("Z") for t in times)
