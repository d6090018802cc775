"""The samples in `events/` are exactly what the product emits for the same sessions.

After a deliberate change to the rendering, write them again with
`.venv/bin/python -m tests.unit.test_notification_samples` and review the diff.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from failover_poller.notifications import (
    EVENT_SOURCE,
    Notification,
    render,
    render_monitoring_gap,
    render_started,
    render_stuck,
)
from failover_poller.plans import TenantInfo, resolve
from tests.fakes import FIXTURES, load_session
from veeam_em.parser import parse_failover_plans

EVENTS = Path(__file__).parents[2] / "events"
HOST = "em01.example.test:9398"
PLANS = FIXTURES / "em" / "query-result-failover-plans-entities.xml"
KINDS = ["finished", "failed", "recovered", "stuck", "started", "monitoring-gap"]


def tenant_of(plan_name: str) -> TenantInfo:
    return resolve(parse_failover_plans(PLANS.read_bytes(), str(PLANS)).plans, plan_name)


def rendered(kind: str) -> Notification:
    """The notification each sample shows, from the EM fixtures."""
    succeeded = load_session("failover-session-stopped-success.xml")
    failed = load_session("failover-session-stopped-failed.xml")
    running = load_session("failover-session-working.xml")
    if kind == "finished":
        return render(succeeded, HOST, tenant=tenant_of(succeeded.name))
    if kind == "failed":
        return render(failed, HOST, tenant=tenant_of(failed.name))
    if kind == "recovered":
        return render(succeeded, HOST, tenant=tenant_of(succeeded.name), recovered_from=failed.id)
    if kind == "stuck":
        return render_stuck(
            running,
            HOST,
            reason="no-progress",
            threshold=timedelta(hours=2),
            now=running.creation_time + timedelta(hours=3),
            tenant=tenant_of(running.name),
        )
    if kind == "started":
        return render_started(running, HOST, tenant=tenant_of(running.name))
    return render_monitoring_gap(
        HOST,
        last_poll_at=datetime(2026, 5, 1, 8, 0, tzinfo=UTC),
        now=datetime(2026, 6, 16, 6, 45, tzinfo=UTC),
    )


def sns_line(notification: Notification) -> dict[str, Any]:
    """What the local runner prints for a message an SNS subscriber receives."""
    return {
        "channel": "sns",
        "subject": notification.subject,
        "message": notification.message,
        "attributes": notification.attributes,
        "variants": notification.variants,
    }


def eventbridge_line(notification: Notification) -> dict[str, Any]:
    """What the local runner prints for an event a rule on the bus receives."""
    return {
        "channel": "eventbridge",
        "source": EVENT_SOURCE,
        "detail-type": notification.detail_type,
        "detail": notification.detail,
    }


@pytest.mark.parametrize("kind", KINDS)
def test_sns_sample_matches_the_rendering(kind: str) -> None:
    sample = json.loads((EVENTS / f"notification-sns-{kind}.json").read_text())

    assert sample == sns_line(rendered(kind))
    assert set(sample["variants"]) == {"default", "email", "sms"}


@pytest.mark.parametrize("kind", KINDS)
def test_eventbridge_sample_matches_the_rendering(kind: str) -> None:
    sample = json.loads((EVENTS / f"notification-eventbridge-{kind}.json").read_text())

    assert sample == eventbridge_line(rendered(kind))
    assert sample["detail"]["alert"] == kind


def write_samples() -> None:
    for kind in KINDS:
        notification = rendered(kind)
        for channel, line in (("sns", sns_line), ("eventbridge", eventbridge_line)):
            path = EVENTS / f"notification-{channel}-{kind}.json"
            path.write_text(json.dumps(line(notification), indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    write_samples()
