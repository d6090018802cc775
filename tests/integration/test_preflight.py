"""The preflight check through the real handler: AWS under moto, EM played by the simulator.

Given a deployment, when the function receives `events/preflight-event.json`, then it
answers one check per thing it looked at, changes nothing and, only when asked, sends one
test notification on each channel.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from jsonschema import Draft202012Validator

from failover_local.em_simulator import EmSimulator, FaultResponse
from failover_local.run import LambdaContext
from failover_poller import handler
from failover_poller.preflight import TEST_DETAIL_TYPE, TEST_EVENT_TYPE
from tests.fakes import FakeClock
from tests.integration.conftest import REPOSITORY

pytestmark = pytest.mark.integration

PREFLIGHT_EVENT = json.loads((REPOSITORY / "events" / "preflight-event.json").read_text())
SCHEMA = json.loads((REPOSITORY / "events" / "failover-notification.schema.json").read_text())


def preflight(send_test: bool = False) -> dict[str, Any]:
    event = {**PREFLIGHT_EVENT, "sendTest": send_test}
    return handler.lambda_handler(event, LambdaContext(timeout_seconds=60))


def checks(result: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    return {check["name"]: (check["ok"], check["detail"]) for check in result["checks"]}


def table_items(local: Any) -> list[dict[str, Any]]:
    table = local.environment["STATE_TABLE_NAME"]
    return boto3.client("dynamodb").scan(TableName=table)["Items"]


def test_the_sample_event_asks_for_a_preflight_without_a_test_notification() -> None:
    assert PREFLIGHT_EVENT == {"preflight": True, "sendTest": False}


def test_a_healthy_deployment_passes_every_check_and_changes_nothing(
    deploy, simulator: EmSimulator, story_clock: FakeClock
) -> None:
    local = deploy()
    story_clock.advance(seconds=60)

    result = preflight()

    assert result["ok"] is True
    assert list(checks(result)) == [
        "credentials",
        "logon",
        "failover sessions",
        "state table",
        "topic",
        "event bus",
    ]
    assert all(ok for ok, _ in checks(result).values()), result
    every_session = len(simulator.story.sessions)
    assert checks(result)["failover sessions"][1].startswith(f"{every_session} visible")
    assert list(local.received()) == []
    assert table_items(local) == []
    assert simulator.open_logon_sessions == 0
    json.dumps(result)


def test_send_test_delivers_one_marked_notification_on_each_channel(deploy) -> None:
    local = deploy()

    result = preflight(send_test=True)
    received = list(local.received())

    assert result["ok"] is True, result
    assert checks(result)["test notification (sns)"][0]
    assert checks(result)["test notification (eventbridge)"][0]
    (sns,) = [line for line in received if line["channel"] == "sns"]
    (event,) = [line for line in received if line["channel"] == "eventbridge"]
    assert sns["subject"].startswith("[TEST]")
    assert sns["attributes"]["event_type"] == TEST_EVENT_TYPE
    assert "[TEST]" in sns["message"]
    assert event["detail-type"] == TEST_DETAIL_TYPE
    assert event["detail"]["alert"] == "test"
    assert list(Draft202012Validator(SCHEMA).iter_errors(event["detail"])) == []
    assert table_items(local) == []


def test_a_wrong_password_fails_the_logon_and_nothing_after_it_on_em(
    deploy, simulator: EmSimulator
) -> None:
    local = deploy()
    boto3.client("secretsmanager").put_secret_value(
        SecretId=local.environment["EM_SECRET_ARN"],
        SecretString=json.dumps({"username": "EM01\\svc-notifier", "password": "not-it"}),
    )

    result = preflight()

    assert result["ok"] is False
    assert checks(result)["credentials"][0] is True
    ok, detail = checks(result)["logon"]
    assert not ok
    assert detail.startswith("authentication:")
    assert "failover sessions" not in checks(result)
    assert checks(result)["state table"][0] is True


def test_an_account_without_a_service_provider_role_is_named_as_such(
    deploy, simulator: EmSimulator
) -> None:
    deploy()
    simulator.inject("query", FaultResponse.em_error(403, "Access denied."), times=5)

    result = preflight()

    assert checks(result)["logon"][0] is True
    ok, detail = checks(result)["failover sessions"]
    assert not ok
    assert "403" in detail
    assert "service-provider role" in detail


def test_an_em_without_the_query_service_is_counted_from_the_collection(
    deploy, simulator: EmSimulator, story_clock: FakeClock
) -> None:
    deploy()
    story_clock.advance(seconds=60)
    simulator.inject("query", FaultResponse.em_error(404, "Not found."))

    result = preflight()

    ok, detail = checks(result)["failover sessions"]
    assert ok, detail
    assert "session collection" in detail


def test_an_unreadable_secret_fails_the_credentials_check(deploy) -> None:
    local = deploy()
    boto3.client("secretsmanager").put_secret_value(
        SecretId=local.environment["EM_SECRET_ARN"], SecretString="not json"
    )

    result = preflight()

    ok, detail = checks(result)["credentials"]
    assert not ok
    assert "cannot read EM credentials" in detail
    assert "logon" not in checks(result)


def test_a_missing_topic_and_bus_fail_their_checks_and_the_test_notification(deploy) -> None:
    local = deploy()
    boto3.client("sns").delete_topic(TopicArn=local.environment["TOPIC_ARN"])
    bus = local.environment["EVENT_BUS_NAME"]
    events = boto3.client("events")
    for rule in events.list_rules(EventBusName=bus)["Rules"]:
        targets = events.list_targets_by_rule(Rule=rule["Name"], EventBusName=bus)["Targets"]
        events.remove_targets(
            Rule=rule["Name"], EventBusName=bus, Ids=[target["Id"] for target in targets]
        )
        events.delete_rule(Name=rule["Name"], EventBusName=bus)
    events.delete_event_bus(Name=bus)

    result = preflight(send_test=True)

    assert result["ok"] is False
    assert checks(result)["topic"][0] is False
    assert "NotFound" in checks(result)["topic"][1]
    assert checks(result)["event bus"][0] is False
    assert "ResourceNotFoundException" in checks(result)["event bus"][1]
    assert checks(result)["test notification (sns)"][0] is False
    assert checks(result)["test notification (eventbridge)"][0] is False
