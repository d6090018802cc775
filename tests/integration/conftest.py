"""Shared set-up for integration tests: AWS under moto's `mock_aws`, EM played by the
simulator over real HTTPS, and the template's resources provisioned as in `make run`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
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

REPOSITORY = Path(__file__).parents[2]
SCHEDULED_EVENT = json.loads((REPOSITORY / "events" / "scheduled-event.json").read_text())
USERNAME = "EM01\\svc-notifier"
# The demo story's sessions: those that finish, with their results, and the others.
FINISHING = {
    "4be1d766-bf90-465a-8df1-2b949f7be762": "Success",
    "aa6845c2-6440-47b3-85e9-8895f3989886": "Warning",
    "5d3e8f21-7a6b-4c19-9e2d-1f0a8b7c6d53": "Failed",
    "c2f9a4b7-3e18-4d6a-b5c0-8e7f6a5d4c32": "Success",
    "f3b7d2a1-8c4e-4b6f-9a15-2e7d6c5b4a38": "Success",
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


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto's `mock_aws` for the test, and a handler that builds its service afresh."""
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        handler.configuration.cache_clear()
        handler.poll_service.cache_clear()
        yield
    handler.configuration.cache_clear()
    handler.poll_service.cache_clear()


@pytest.fixture
def deploy(
    monkeypatch: pytest.MonkeyPatch, aws: None, simulator: EmSimulator, pki: TestPki
) -> Callable[..., LocalAws]:
    """Provision the template's resources and set the function's environment."""

    def deploy_with(ca_bundle: Path | None = None, **parameters: str) -> LocalAws:
        local = provision(
            Template.load(REPOSITORY / "template.yaml"),
            "",
            {"username": USERNAME, "password": DEMO_PASSWORD},
            {
                "EmUrl": simulator.url,
                "EmCaBundle": (ca_bundle or pki.ca_bundle).read_text(),
                **parameters,
            },
        )
        for name, value in local.environment.items():
            monkeypatch.setenv(name, value)
        return local

    return deploy_with


def poll() -> dict[str, Any]:
    """One scheduled invocation of the real handler."""
    return handler.lambda_handler(SCHEDULED_EVENT, LambdaContext(timeout_seconds=60))


def session_of(line: dict[str, Any]) -> str:
    """The session GUID a received notification is about."""
    if line["channel"] == "sns":
        return str(line["attributes"].get("session_id", ""))
    return str(line["detail"].get("sessionId", ""))
