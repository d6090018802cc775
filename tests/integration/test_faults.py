"""Faults at every step, then the faults clear: each finished session still reaches each
channel exactly once, and EM faults end polls normally instead of raising.

EM faults are scripted into the simulator; AWS faults are injected into botocore in front
of moto, at the call named, for the number of calls given.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.client
import pytest
from aws_lambda_powertools.utilities import parameters
from botocore.exceptions import ClientError

from failover_local.aws_local import LocalAws
from failover_local.em_simulator import EmSimulator, FaultResponse, error_xml
from failover_poller import handler
from tests.fakes import FakeClock
from tests.integration.conftest import FINISHING, poll, session_of

pytestmark = pytest.mark.integration

HOSTILE = sorted((Path(__file__).parents[1] / "fixtures" / "em" / "hostile").iterdir())
POLLS = 9
# Poll 3 of the demo story is when its first sessions finish.
FAULT_AT = 3


class AwsFaults:
    """Fail the next `times` calls of an AWS operation with an error code, before moto."""

    def __init__(self) -> None:
        self.planned: dict[str, list[str]] = {}
        self.injected: Counter[str] = Counter()

    def fail(self, operation: str, code: str, times: int = 1) -> None:
        self.planned.setdefault(operation, []).extend([code] * times)

    def wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def call(client: Any, operation: str, params: dict[str, Any]) -> Any:
            codes = self.planned.get(operation)
            if codes:
                code = codes.pop(0)
                self.injected[operation] += 1
                if code == "FailFirstEntry":
                    return self._fail_first_entry(original, client, operation, params)
                raise ClientError({"Error": {"Code": code, "Message": "injected"}}, operation)
            return original(client, operation, params)

        return call

    @staticmethod
    def _fail_first_entry(
        original: Callable[..., Any], client: Any, operation: str, params: dict[str, Any]
    ) -> Any:
        """Let AWS take every entry of a batch but the first, which fails on its own."""
        field = "Entries" if operation == "PutEvents" else "PublishBatchRequestEntries"
        first, rest = params[field][0], params[field][1:]
        response = original(client, operation, {**params, field: rest}) if rest else {}
        if operation == "PutEvents":
            failed = {"ErrorCode": "InternalFailure", "ErrorMessage": "injected"}
            return {
                "FailedEntryCount": 1,
                "Entries": [failed, *response.get("Entries", [])],
            }
        failed = {"Id": first["Id"], "Code": "InternalError", "SenderFault": False}
        return {
            "Successful": response.get("Successful", []),
            "Failed": [failed, *response.get("Failed", [])],
        }


@pytest.fixture
def aws_faults(monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsFaults]:
    faults = AwsFaults()
    original = botocore.client.BaseClient._make_api_call
    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", faults.wrap(original))
    yield faults


def tell_story(
    local: LocalAws,
    clock: FakeClock,
    before: dict[int, Callable[[], None]] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Poll through the demo story, running `before[n]` just before poll n."""
    received: list[dict[str, Any]] = []
    reports: list[dict[str, Any]] = []
    for number in range(1, POLLS + 1):
        if before and number in before:
            before[number]()
        reports.append(poll())
        received += local.received()
        clock.advance(seconds=1)
    return received, reports


def assert_exactly_once(received: list[dict[str, Any]]) -> None:
    sessions = [line for line in received if line["channel"] in ("sns", "eventbridge")]
    deliveries = Counter((line["channel"], session_of(line)) for line in sessions)
    expected = {(channel, s) for channel in ("sns", "eventbridge") for s in FINISHING}
    lost = expected - set(deliveries)
    duplicated = {key: count for key, count in deliveries.items() if count > 1}
    assert not lost, f"lost: {lost}"
    assert not duplicated, f"duplicated: {duplicated}"
    assert set(deliveries) == expected


EM_FAULTS: dict[str, Callable[[EmSimulator], None]] = {
    "logon refused (401)": lambda em: em.inject(
        "logon", FaultResponse(401, error_xml(401, "Unauthorized"), {"WWW-Authenticate": "Basic"})
    ),
    "logon 201 without a token": lambda em: em.inject("logon", FaultResponse(201, b"")),
    "token expired on a data call (401)": lambda em: em.inject(
        "query", FaultResponse(401, error_xml(401, "Session expired"))
    ),
    "503 once": lambda em: em.inject("query", FaultResponse(503, error_xml(503, "Busy"))),
    "500 until the retries give up": lambda em: em.inject(
        "query", FaultResponse(500, error_xml(500, "Object reference not set")), times=4
    ),
    "connection dropped": lambda em: em.inject(
        "query", FaultResponse(0, drop_connection=True), times=3
    ),
    "HTML page from a proxy": lambda em: em.inject(
        "query",
        FaultResponse(502, b"<html><body>Bad Gateway</body></html>", {"Content-Type": "text/html"}),
    ),
    "JSON instead of XML": lambda em: em.inject(
        "query", FaultResponse(200, b'{"QueryResult": {}}', {"Content-Type": "application/json"})
    ),
    "read timeout": lambda em: em.inject("query", FaultResponse(200, b"", delay=2.0), times=2),
}


@pytest.mark.parametrize("fault", EM_FAULTS, ids=list(EM_FAULTS))
def test_em_fault_then_recovery_loses_and_duplicates_nothing(
    monkeypatch, deploy, simulator, story_clock, fault: str
) -> None:
    monkeypatch.setenv("EM_READ_TIMEOUT_SECONDS", "0.5")
    local = deploy()

    received, reports = tell_story(
        local, story_clock, {FAULT_AT: lambda: EM_FAULTS[fault](simulator)}
    )

    assert_exactly_once(received)
    assert simulator.open_logon_sessions == 0
    assert all(report["ok"] for number, report in enumerate(reports, 1) if number != FAULT_AT)


@pytest.mark.parametrize(
    ("operation", "code", "times"),
    [
        ("PublishBatch", "ThrottledException", 1),
        ("PublishBatch", "InternalError", 3),
        ("PublishBatch", "FailFirstEntry", 1),
        ("PutEvents", "ThrottlingException", 2),
        ("PutEvents", "FailFirstEntry", 1),
        ("PutItem", "ProvisionedThroughputExceededException", 2),
        ("BatchGetItem", "InternalServerError", 1),
        ("GetItem", "InternalServerError", 1),
        ("UpdateItem", "ThrottlingException", 1),
        ("Query", "InternalServerError", 1),
        ("GetSecretValue", "InternalServiceError", 1),
    ],
)
def test_aws_fault_then_recovery_loses_and_duplicates_nothing(
    deploy, story_clock, aws_faults, operation: str, code: str, times: int
) -> None:
    local = deploy()

    def inject() -> None:
        aws_faults.fail(operation, code, times)
        # The fault meets a new container: nothing cached (secret, watcher record) hides it.
        parameters.clear_caches()
        handler.poll_service.cache_clear()

    received, _ = tell_story(local, story_clock, {FAULT_AT: inject})

    assert aws_faults.injected[operation] == times
    assert_exactly_once(received)


def test_a_blind_poller_raises_one_unhealthy_and_one_recovered_notification(
    monkeypatch, deploy, simulator, story_clock
) -> None:
    monkeypatch.setenv("UNHEALTHY_AFTER_POLLS", "2")
    local = deploy()
    outage = FaultResponse(503, error_xml(503, "Service Unavailable"))

    received, reports = tell_story(
        local, story_clock, {2: lambda: simulator.inject("logon", outage, times=3)}
    )

    health = [line for line in received if not session_of(line)]
    kinds = Counter(
        (line["channel"], line["attributes"]["event_type"])
        if line["channel"] == "sns"
        else (line["channel"], line["detail-type"])
        for line in health
    )
    assert kinds == {
        ("sns", "poller.unhealthy"): 1,
        ("sns", "poller.recovered"): 1,
        ("eventbridge", "Cloud Failover Poller Unhealthy"): 1,
        ("eventbridge", "Cloud Failover Poller Recovered"): 1,
    }
    assert [report["ok"] for report in reports[1:5]] == [False, False, False, True]
    assert_exactly_once([line for line in received if session_of(line)])


@pytest.mark.parametrize("body", HOSTILE, ids=[path.name for path in HOSTILE])
def test_a_hostile_session_body_spoils_only_that_session(
    deploy, simulator, story_clock, body: Path
) -> None:
    first, second = "4be1d766-bf90-465a-8df1-2b949f7be762", "5d3e8f21-7a6b-4c19-9e2d-1f0a8b7c6d53"
    local = deploy(EmSessionIds=f"{first},{second}")
    story_clock.advance(seconds=30)
    simulator.inject("session", FaultResponse(200, body.read_bytes()), path_contains=first)

    report = poll()
    received = list(local.received())

    assert report["ok"]
    assert report["session_errors"] == 1
    assert {session_of(line) for line in received} == {second}
    stored = boto3.client("dynamodb").scan(TableName=local.environment["STATE_TABLE_NAME"])
    assert first not in {item["SessionId"]["S"] for item in stored["Items"]}


def test_one_watched_session_failing_with_5xx_spoils_only_that_session(
    deploy, simulator, story_clock
) -> None:
    first, second = "4be1d766-bf90-465a-8df1-2b949f7be762", "5d3e8f21-7a6b-4c19-9e2d-1f0a8b7c6d53"
    local = deploy(EmSessionIds=f"{first},{second}")
    story_clock.advance(seconds=30)
    simulator.inject(
        "session", FaultResponse(500, error_xml(500, "Internal error")), 4, path_contains=first
    )

    report = poll()
    received = list(local.received())

    assert report["ok"]
    assert report["session_errors"] == 1
    assert {session_of(line) for line in received} == {second}
