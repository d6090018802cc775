"""The real handler, with AWS under moto's `mock_aws` and EM played by the simulator."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest

from failover_local.em_simulator import EmSimulator, FaultResponse, error_xml
from failover_local.run import LambdaContext
from failover_local.story import demo_story
from failover_local.tls import make_test_pki
from failover_poller import handler
from tests.integration.conftest import (
    FINISHING,
    OLD_SESSION,
    SCHEDULED_EVENT,
    STILL_RUNNING,
    poll,
)

pytestmark = pytest.mark.integration


def test_each_finished_session_is_notified_once_on_both_channels(
    deploy, simulator, story_clock
) -> None:
    local = deploy()
    received: list[dict[str, Any]] = []

    for _ in range(8):
        report = poll()
        assert report["ok"], report
        received += local.received()
        story_clock.advance(seconds=1)

    sns = {line["attributes"]["session_id"]: line for line in received if line["channel"] == "sns"}
    events = [line for line in received if line["channel"] == "eventbridge"]
    assert len(sns) == len(events) == len(received) / 2 == len(FINISHING)
    assert {s: line["attributes"]["result"] for s, line in sns.items()} == FINISHING
    assert {e["detail"]["sessionId"]: e["detail"]["result"] for e in events} == FINISHING
    assert STILL_RUNNING not in sns
    assert OLD_SESSION not in sns
    assert simulator.open_logon_sessions == 0


def test_a_named_session_is_notified_even_if_it_ended_long_ago(deploy, simulator) -> None:
    local = deploy(EmSessionIds=OLD_SESSION)

    report = poll()
    received = list(local.received())

    assert report["ok"]
    assert [line["channel"] for line in received] == ["sns", "eventbridge"]
    assert received[1]["detail"]["sessionId"] == OLD_SESSION
    assert simulator.request_counts["session"] == 1


def test_an_untrusted_certificate_is_a_reported_tls_failure(deploy, simulator, tmp_path) -> None:
    local = deploy(ca_bundle=make_test_pki(tmp_path).ca_bundle)

    report = poll()

    assert not report["ok"]
    assert report["failure"] == "tls"
    assert "TLS certificate failure" in report["error"]
    assert simulator.host in report["error"]
    assert list(local.received()) == []


def test_configuration_errors_fail_fast_naming_the_variable(monkeypatch, deploy) -> None:
    deploy()
    monkeypatch.setenv("TOPIC_ARN", "not-an-arn")

    with pytest.raises(ValueError, match="TOPIC_ARN"):
        poll()


def test_state_is_kept_per_session_and_not_rewritten_when_nothing_changed(
    deploy, story_clock
) -> None:
    local = deploy()
    story_clock.advance(seconds=30)
    poll()
    table = local.environment["STATE_TABLE_NAME"]
    first = boto3.client("dynamodb").scan(TableName=table)["Items"]

    poll()
    second = boto3.client("dynamodb").scan(TableName=table)["Items"]

    versions = {item["SessionId"]["S"]: item.get("Version", {}).get("N") for item in first}
    assert {item["SessionId"]["S"]: item.get("Version", {}).get("N") for item in second} == versions
    assert set(versions) >= {*FINISHING, STILL_RUNNING, "#watcher"}
    assert all("Pending" not in item for item in second)


def test_two_ems_are_polled_independently_one_invocation_each(
    monkeypatch, deploy, simulator, pki, story_clock
) -> None:

    local = deploy()
    with EmSimulator(demo_story(story_clock.now), pki, clock=story_clock) as second:
        targets = [
            {
                "url": second.url,
                "secretArn": local.environment["EM_SECRET_ARN"],
                "caBundle": pki.ca_bundle.read_text(),
            }
        ]
        monkeypatch.setenv("EM_TARGETS", json.dumps(targets))
        second.inject("logon", FaultResponse(503, error_xml(503, "Down")), times=20)
        story_clock.advance(seconds=30)

        first_host, second_host = urlsplit(simulator.url).netloc, urlsplit(second.url).netloc
        first_report = handler.lambda_handler(
            {**SCHEDULED_EVENT, "emHost": first_host}, LambdaContext(timeout_seconds=60)
        )
        second_report = handler.lambda_handler(
            {**SCHEDULED_EVENT, "emHost": second_host}, LambdaContext(timeout_seconds=60)
        )

    received = list(local.received())
    assert first_report["ok"] and first_report["em_host"] == first_host
    assert not second_report["ok"] and second_report["em_host"] == second_host
    assert {line["attributes"]["em_host"] for line in received if line["channel"] == "sns"} == {
        first_host
    }
    assert len(received) == 2 * len(FINISHING)
