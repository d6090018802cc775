"""The samples in `events/` are exactly what the product emits for the same sessions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from failover_poller.notifications import EVENT_SOURCE, render
from tests.fakes import load_session

EVENTS = Path(__file__).parents[2] / "events"
HOST = "em01.example.test:9398"
SAMPLES = [
    ("failover-session-stopped-success.xml", "finished"),
    ("failover-session-stopped-failed.xml", "failed"),
]


@pytest.mark.parametrize(("fixture", "outcome"), SAMPLES)
def test_sns_sample_matches_the_rendering(fixture: str, outcome: str) -> None:
    notification = render(load_session(fixture), HOST)
    sample = json.loads((EVENTS / f"notification-sns-{outcome}.json").read_text())

    assert sample == {
        "channel": "sns",
        "subject": notification.subject,
        "message": notification.message,
        "attributes": notification.attributes,
    }


@pytest.mark.parametrize(("fixture", "outcome"), SAMPLES)
def test_eventbridge_sample_matches_the_rendering(fixture: str, outcome: str) -> None:
    notification = render(load_session(fixture), HOST)
    sample = json.loads((EVENTS / f"notification-eventbridge-{outcome}.json").read_text())

    assert sample["source"] == EVENT_SOURCE
    assert sample["detail-type"] == notification.detail_type
    assert sample["detail"] == notification.detail
    assert sample["detail"]["outcome"] == outcome
