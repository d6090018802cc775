"""Alerts beyond finished and failed, through the real handler and the EM simulator."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from failover_poller import handler
from tests.integration.conftest import FINISHING, STILL_RUNNING, poll, session_of

pytestmark = pytest.mark.integration

NORTHWIND_FAILED = "5d3e8f21-7a6b-4c19-9e2d-1f0a8b7c6d53"


def event_type(line: dict[str, Any]) -> str:
    if line["channel"] == "sns":
        return str(line["attributes"]["event_type"])
    return str(line["detail"]["alert"])


def test_started_sessions_are_told_once_when_asked_for(deploy, story_clock) -> None:
    local = deploy(NotifyStarted="true")
    story_clock.advance(seconds=1.2)

    poll()
    first = list(local.received())
    story_clock.advance(seconds=0.5)
    poll()
    second = [
        line for line in local.received() if event_type(line) in ("failover.started", "started")
    ]

    started = Counter(session_of(line) for line in first)
    assert started == {
        "4be1d766-bf90-465a-8df1-2b949f7be762": 2,
        "aa6845c2-6440-47b3-85e9-8895f3989886": 2,
    }
    assert {event_type(line) for line in first} == {"failover.started", "started"}
    # Later polls tell only the sessions that started since.
    assert Counter(session_of(line) for line in second) == {NORTHWIND_FAILED: 2}


def test_a_muted_plan_reaches_eventbridge_only(deploy, story_clock) -> None:
    local = deploy(MutedPlans="Northwind Failover Plan, Other Plan")
    received: list[dict[str, Any]] = []

    for _ in range(8):
        poll()
        received += local.received()
        story_clock.advance(seconds=1)

    northwind = [line for line in received if "Northwind" in str(line.get("detail", line))]
    assert {line["channel"] for line in northwind} == {"eventbridge"}
    assert all(line["detail"]["muted"] for line in northwind)
    others = {session_of(line) for line in received if line["channel"] == "sns"}
    assert others == set(FINISHING) - {NORTHWIND_FAILED, "f3b7d2a1-8c4e-4b6f-9a15-2e7d6c5b4a38"}


def test_sessions_that_ended_while_the_poller_was_down_are_caught_up(deploy, story_clock) -> None:
    local = deploy()
    poll()
    assert list(local.received()) == []

    story_clock.advance(seconds=10)  # the poller was away while every session ended
    poll()
    received = list(local.received())

    sessions = Counter(
        session_of(line) for line in received if event_type(line) != "failover.stuck"
    )
    assert sessions == dict.fromkeys(FINISHING, 2)
    assert STILL_RUNNING not in sessions


def test_a_gap_longer_than_em_keeps_sessions_is_told_once(deploy, story_clock) -> None:
    local = deploy()
    poll()
    table = local.environment["STATE_TABLE_NAME"]
    dynamodb = boto3.client("dynamodb")
    key = {"EmHost": {"S": poll()["em_host"]}, "SessionId": {"S": "#watcher"}}
    long_ago = (datetime.now(UTC) - timedelta(days=31)).isoformat()
    dynamodb.update_item(
        TableName=table,
        Key=key,
        UpdateExpression="SET LastPollAt = :then",
        ExpressionAttributeValues={":then": {"S": long_ago}},
    )
    handler.poll_service.cache_clear()  # a new container, after the outage

    poll()
    poll()
    received = list(local.received())

    gaps = [line for line in received if event_type(line) in ("monitoring.gap", "monitoring-gap")]
    assert sorted(line["channel"] for line in gaps) == ["eventbridge", "sns"]
