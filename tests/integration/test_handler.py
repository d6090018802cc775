"""The real handler, with AWS under moto's `mock_aws` and EM played by the simulator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws

from failover_local.aws_local import LocalAws, Template, provision
from failover_local.em_simulator import DEMO_PASSWORD, EmSimulator
from failover_local.run import LambdaContext
from failover_local.story import demo_story
from failover_local.tls import TestPki, make_test_pki
from failover_poller import handler
from tests.fakes import FakeClock

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).parents[2]
SCHEDULED_EVENT = json.loads((REPOSITORY / "events" / "scheduled-event.json").read_text())
USERNAME = "EM01\\svc-notifier"
FINISHING = {
    "4be1d766-bf90-465a-8df1-2b949f7be762": "Success",
    "aa6845c2-6440-47b3-85e9-8895f3989886": "Warning",
    "5d3e8f21-7a6b-4c19-9e2d-1f0a8b7c6d53": "Failed",
    "c2f9a4b7-3e18-4d6a-b5c0-8e7f6a5d4c32": "Success",
}
STILL_RUNNING = "e8a1d6c4-2b7f-4f3e-a9d8-7c6b5a4f3e29"
OLD_SESSION = "0b7c2f3e-9d41-4c55-8a0e-6f1d2c3b4a50"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def story_clock() -> FakeClock:
    return FakeClock(datetime.now(UTC))


@pytest.fixture
def simulator(pki: TestPki, story_clock: FakeClock) -> Iterator[EmSimulator]:
    with EmSimulator(demo_story(story_clock.now), pki, clock=story_clock) as running:
        yield running


@pytest.fixture(autouse=True)
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        handler.poll_service.cache_clear()
        yield
    handler.poll_service.cache_clear()


def deploy(
    monkeypatch: pytest.MonkeyPatch, simulator: EmSimulator, ca_bundle: Path, **parameters: str
) -> LocalAws:
    local = provision(
        Template.load(REPOSITORY / "template.yaml"),
        "",
        {"username": USERNAME, "password": DEMO_PASSWORD},
        {"EmUrl": simulator.url, "EmCaBundle": ca_bundle.read_text(), **parameters},
    )
    for name, value in local.environment.items():
        monkeypatch.setenv(name, value)
    return local


def poll() -> dict[str, Any]:
    return handler.lambda_handler(SCHEDULED_EVENT, LambdaContext(timeout_seconds=60))


def test_each_finished_session_is_notified_once_on_both_channels(
    monkeypatch, simulator, pki, story_clock
) -> None:
    local = deploy(monkeypatch, simulator, pki.ca_bundle)
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


def test_a_named_session_is_notified_even_if_it_ended_long_ago(monkeypatch, simulator, pki) -> None:
    local = deploy(monkeypatch, simulator, pki.ca_bundle, EmSessionIds=OLD_SESSION)

    report = poll()
    received = list(local.received())

    assert report["ok"]
    assert [line["channel"] for line in received] == ["sns", "eventbridge"]
    assert received[1]["detail"]["sessionId"] == OLD_SESSION
    assert simulator.request_counts["session"] == 1


def test_an_untrusted_certificate_is_a_reported_tls_failure(
    monkeypatch, simulator, tmp_path
) -> None:
    stranger = make_test_pki(tmp_path)
    local = deploy(monkeypatch, simulator, stranger.ca_bundle)

    report = poll()

    assert not report["ok"]
    assert report["failure"] == "tls"
    assert "TLS certificate failure" in report["error"]
    assert simulator.host in report["error"]
    assert list(local.received()) == []


def test_configuration_errors_fail_fast_naming_the_variable(monkeypatch, simulator, pki) -> None:
    deploy(monkeypatch, simulator, pki.ca_bundle)
    monkeypatch.setenv("TOPIC_ARN", "not-an-arn")

    with pytest.raises(ValueError, match="TOPIC_ARN"):
        poll()


def test_state_is_kept_per_session_and_not_rewritten_when_nothing_changed(
    monkeypatch, simulator, pki, story_clock
) -> None:
    import boto3

    local = deploy(monkeypatch, simulator, pki.ca_bundle)
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
