"""Overlapping invocations against one table publish each transition once per channel."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from moto import mock_aws

from failover_local.aws_local import Template, provision
from failover_local.em_simulator import DEMO_PASSWORD, EmSimulator
from failover_local.story import demo_story
from failover_local.tls import TestPki, make_test_pki
from failover_poller.runtime import build_service
from tests.fakes import FakeClock

pytestmark = pytest.mark.integration

REPOSITORY = Path(__file__).parents[2]
FINISHING = {
    "4be1d766-bf90-465a-8df1-2b949f7be762",
    "aa6845c2-6440-47b3-85e9-8895f3989886",
    "5d3e8f21-7a6b-4c19-9e2d-1f0a8b7c6d53",
    "c2f9a4b7-3e18-4d6a-b5c0-8e7f6a5d4c32",
}


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


@pytest.mark.parametrize("invocations", [2, 4, 8])
def test_concurrent_polls_deliver_each_transition_exactly_once(
    monkeypatch: pytest.MonkeyPatch,
    simulator: EmSimulator,
    pki: TestPki,
    story_clock: FakeClock,
    invocations: int,
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        local = provision(
            Template.load(REPOSITORY / "template.yaml"),
            "",
            {"username": "EM01\\svc-notifier", "password": DEMO_PASSWORD},
            {"EmUrl": simulator.url, "EmCaBundle": pki.ca_bundle.read_text()},
        )
        environment = {**os.environ, **local.environment}
        # Each invocation is its own container: its own service, clients and EM logon.
        services = [build_service(environment) for _ in range(invocations)]
        received = []

        with ThreadPoolExecutor(max_workers=invocations) as pool:
            for _ in range(8):
                reports = list(pool.map(lambda service: service.poll(), services))
                assert all(report.ok for report in reports), reports
                received += local.received()
                story_clock.advance(seconds=1)

    deliveries = Counter(
        (line["channel"], line["attributes"]["session_id"])
        if line["channel"] == "sns"
        else (line["channel"], line["detail"]["sessionId"])
        for line in received
    )
    assert set(deliveries.values()) == {1}
    assert {session for _, session in deliveries} == FINISHING
    assert len(deliveries) == 2 * len(FINISHING)
    assert simulator.open_logon_sessions == 0
