"""Overlapping invocations against one table publish each transition once per channel."""

from __future__ import annotations

import os
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from moto import mock_aws
from moto.dynamodb.models import DynamoDBBackend

from failover_local.aws_local import Template, provision
from failover_local.em_simulator import DEMO_PASSWORD, EmSimulator
from failover_local.tls import TestPki
from failover_poller.config import Config
from failover_poller.runtime import build_service
from tests.fakes import FakeClock
from tests.integration.conftest import FINISHING, REPOSITORY

pytestmark = pytest.mark.integration


@pytest.fixture
def atomic_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make moto's conditional writes atomic, as DynamoDB's are.

    moto checks a write's condition and then writes, with nothing between two threads that
    do the same: both can pass. DynamoDB guarantees that only one does, and that is the
    guarantee the poller relies on, so the test gives moto's backend one lock for writes.
    """
    lock = threading.Lock()
    for name in ("put_item", "update_item", "delete_item", "transact_write_items"):
        original = getattr(DynamoDBBackend, name)

        def locked(*args: Any, __original: Any = original, **kwargs: Any) -> Any:
            with lock:
                return __original(*args, **kwargs)

        monkeypatch.setattr(DynamoDBBackend, name, locked)


@pytest.mark.usefixtures("atomic_writes")
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
