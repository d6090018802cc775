"""The routing rules shipped in template.yaml match the events they should, and no others.

Each rule's pattern is read from the template and tried, with moto's EventBridge pattern
matching, against every sample event in `events/`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode_str
from moto.events.models import EventPattern, EventPatternParser

pytestmark = pytest.mark.infrastructure

REPOSITORY = Path(__file__).parents[2]
SAMPLES = sorted((REPOSITORY / "events").glob("notification-eventbridge-*.json"))
# Rule -> the samples it must match (by file name stem); it must match no other.
EXPECTED = {
    "FailedSessionTicketRule": {"notification-eventbridge-failed"},
    "AllEventsRule": {sample.stem for sample in SAMPLES},
}


@pytest.fixture(scope="module")
def patterns() -> dict[str, Any]:
    template, problems = decode_str((REPOSITORY / "template.yaml").read_text())
    assert not problems
    return {
        name: resource["Properties"]["EventPattern"]
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Events::Rule"
    }


def envelope(sample: Path) -> dict[str, Any]:
    """A sample as EventBridge hands it to rules."""
    line = json.loads(sample.read_text())
    return {
        "id": "7bf73129-1428-4cd3-a780-95db273d1602",
        "detail-type": line["detail-type"],
        "source": line["source"],
        "account": "123456789012",
        "time": "2026-12-03T17:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": line["detail"],
    }


def test_every_shipped_rule_is_checked(patterns: dict[str, Any]) -> None:
    assert set(patterns) == set(EXPECTED)


@pytest.mark.parametrize("rule", sorted(EXPECTED))
def test_a_rule_matches_exactly_its_events(rule: str, patterns: dict[str, Any]) -> None:
    # moto's server does not answer TestEventPattern; its rule matching is what delivers
    # events to targets, so the same code decides here.
    pattern = EventPatternParser(json.dumps(patterns[rule])).parse()
    matcher = EventPattern(json.dumps(patterns[rule]), pattern)

    matched = {sample.stem for sample in SAMPLES if matcher.matches_event(envelope(sample))}

    assert matched == EXPECTED[rule]


def test_the_ticket_rule_reads_fields_every_failed_event_has(patterns: dict[str, Any]) -> None:
    template, _ = decode_str((REPOSITORY / "template.yaml").read_text())
    target = template["Resources"]["FailedSessionTicketRule"]["Properties"]["Targets"][0]
    failed = json.loads(
        (REPOSITORY / "events" / "notification-eventbridge-failed.json").read_text()
    )

    for path in target["InputTransformer"]["InputPathsMap"].values():
        value: Any = failed
        for part in path.removeprefix("$.").split("."):
            value = value[part]
        assert value is not None, path
