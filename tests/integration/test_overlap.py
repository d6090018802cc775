"""Overlapping invocations against one table publish each transition once per channel."""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from moto import mock_aws

from failover_local.aws_local import Template, provision
from failover_local.em_simulator import DEMO_PASSWORD, EmSimulator
from failover_local.tls import TestPki
from failover_poller.config import Config
from failover_poller.runtime import build_service
from tests.fakes import FakeClock
from tests.integration.conftest import FINISHING, REPOSITORY

pytestmark = pytest.mark.integration


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
        config = Config.from_environ(environment)
        services = [build_service(config, config.targets[0]) for _ in range(invocations)]
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
    assert {session for _, session in deliveries} == set(FINISHING)
    assert len(deliveries) == 2 * len(FINISHING)
    assert simulator.open_logon_sessions == 0
