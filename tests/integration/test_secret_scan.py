"""No password, token, Authorization header or secret value ever leaves the notifier.

Given an EM account with a distinctive password and an EM whose tokens are known, every
error path (and the happy one) is driven through the real handler under moto and through
the local runner and preflight check as subprocesses. Everything they produce is kept: log
records, stdout and stderr, the handler's answers and exceptions, every SNS message and
EventBridge event a subscriber receives, every item in the state table. None of it may
hold the password, a token, the Basic credentials or the secret's JSON.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from failover_local import em_simulator
from failover_local.aws_local import LocalAws
from failover_local.em_simulator import EmSimulator, FaultResponse, error_xml
from failover_local.run import LambdaContext
from failover_local.story import demo_story
from failover_local.tls import TestPki, make_test_pki
from failover_poller import handler
from tests.fakes import FakeClock
from tests.integration.conftest import FINISHING, REPOSITORY, SCHEDULED_EVENT, USERNAME

pytestmark = pytest.mark.integration

PASSWORD = "Kq7-quokka-SECRET-9f3c1ab2"
WRONG_PASSWORD = "Wp4-platypus-WRONG-5d2e88c"
HOSTILE = sorted((REPOSITORY / "tests" / "fixtures" / "em" / "hostile").iterdir())
WATCHED = next(iter(FINISHING))
# Polls enough for the demo story to finish, the poller to turn unhealthy and back off.
POLLS = 6


def account_secrets(password: str) -> dict[str, str]:
    """Every form of one account that must never appear."""
    secret = {"username": USERNAME, "password": password}
    return {
        f"password {password[:3]}": password,
        f"Basic credentials of {password[:3]}": base64.b64encode(
            f"{USERNAME}:{password}".encode()
        ).decode(),
        f"secret JSON of {password[:3]}": json.dumps(secret),
        f"secret JSON of {password[:3]}, compact": json.dumps(secret, separators=(",", ":")),
    }


class KnownTokens:
    """Stands in for `secrets` in the simulator: each logon's token is recorded, and the
    next one can be predicted (to have a hostile EM echo it)."""

    def __init__(self) -> None:
        self.issued: list[str] = []

    def token_bytes(self, size: int) -> bytes:
        raw = self._raw(len(self.issued), size)
        self.issued.append(base64.b64encode(raw).decode("ascii"))
        return raw

    def upcoming(self, ahead: int = 0) -> str:
        return base64.b64encode(self._raw(len(self.issued) + ahead, 48)).decode("ascii")

    @staticmethod
    def _raw(number: int, size: int) -> bytes:
        return f"scan-token-{number:05d}-".encode().ljust(size, b"~")[:size]


class Output:
    """Everything that came out of the notifier during a test, as text."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.gather: Callable[[], None] = lambda: None

    def add(self, value: Any) -> None:
        self.texts.append(value if isinstance(value, str) else json.dumps(value, default=str))

    def leaks(self, forbidden: dict[str, str]) -> list[str]:
        """The names of the forbidden values found, after gathering the logs and streams."""
        self.gather()
        assert self.texts, "nothing was captured"
        return [name for name, value in forbidden.items() if any(value in t for t in self.texts)]


@pytest.fixture
def tokens(monkeypatch: pytest.MonkeyPatch) -> KnownTokens:
    known = KnownTokens()
    monkeypatch.setattr(em_simulator, "secrets", known)
    return known


@pytest.fixture
def simulator(pki: TestPki, story_clock: FakeClock, tokens: KnownTokens) -> Iterator[EmSimulator]:
    """The integration suite's simulator, accepting only the distinctive password."""
    story = demo_story(story_clock.now)
    with EmSimulator(story, pki, clock=story_clock, password=PASSWORD) as running:
        yield running


@pytest.fixture
def output(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> Iterator[Output]:
    """Collects logs at DEBUG (the function's JSON log lines as Lambda writes them, and
    every other logger but AWS's SDK and moto, whose DEBUG lines print whole HTTP bodies by
    design and never run in Lambda) and everything written to stdout and stderr."""
    collected = Output()
    caplog.set_level(logging.DEBUG)
    for name in ("botocore", "boto3", "s3transfer", "moto", "werkzeug"):
        caplog.set_level(logging.INFO, logger=name)
    function_log = io.StringIO()
    function_handler = handler.logger.registered_handler
    assert isinstance(function_handler, logging.StreamHandler)
    previous_stream = function_handler.setStream(function_log)
    previous_level = handler.logger.level

    def gather() -> None:
        collected.add(function_log.getvalue())
        collected.add(caplog.text)
        for record in caplog.records:
            collected.add(record.getMessage())
            collected.add({k: v for k, v in vars(record).items() if k not in ("args", "msg")})
            if record.exc_info:
                collected.add("".join(traceback.format_exception(*record.exc_info)))
        captured = capfd.readouterr()
        collected.add(captured.out)
        collected.add(captured.err)

    collected.gather = gather
    handler.logger.setLevel(logging.DEBUG)
    try:
        yield collected
    finally:
        handler.logger.setLevel(previous_level)
        function_handler.setStream(previous_stream)


@pytest.fixture
def forbidden(tokens: KnownTokens) -> Callable[[], dict[str, str]]:
    def everything() -> dict[str, str]:
        values = account_secrets(PASSWORD) | account_secrets(WRONG_PASSWORD)
        return values | {f"token {n}": token for n, token in enumerate(tokens.issued)}

    return everything


def invoke(out: Output, event: dict[str, Any]) -> None:
    """One invocation of the real handler; its answer or its exception is output too."""
    try:
        out.add(handler.lambda_handler(event, LambdaContext(timeout_seconds=60)))
    except Exception as error:
        out.add("".join(traceback.format_exception(error)))


def put_secret(local: LocalAws, secret: str) -> None:
    boto3.client("secretsmanager").put_secret_value(
        SecretId=local.environment["EM_SECRET_ARN"], SecretString=secret
    )


def keep_aws_state(out: Output, local: LocalAws) -> None:
    """What subscribers received and what the table holds."""
    for line in local.received():
        out.add(line)
    table = local.environment["STATE_TABLE_NAME"]
    for page in boto3.client("dynamodb").get_paginator("scan").paginate(TableName=table):
        out.add(page["Items"])


def polls(out: Output, clock: FakeClock, count: int = POLLS) -> None:
    for _ in range(count):
        invoke(out, SCHEDULED_EVENT)
        clock.advance(seconds=1)


# --- The handler, in this process ----------------------------------------------------------


def wrong_password(local: LocalAws, em: EmSimulator, clock: FakeClock, out: Output) -> None:
    put_secret(local, json.dumps({"username": USERNAME, "password": WRONG_PASSWORD}))
    polls(out, clock)
    clock.advance(minutes=30)  # past the logon back-off: the poller tries again
    polls(out, clock, 2)


def em_500(local: LocalAws, em: EmSimulator, clock: FakeClock, out: Output) -> None:
    em.inject("query", FaultResponse.em_error(500, "Internal error."), times=40)
    polls(out, clock, 1)  # it gives up only after urllib3's retries and their back-off


def refused_token(local: LocalAws, em: EmSimulator, clock: FakeClock, out: Output) -> None:
    em.inject("query", FaultResponse.em_error(401, "Session expired."), times=40)
    polls(out, clock)


def expired_tokens(local: LocalAws, em: EmSimulator, clock: FakeClock, out: Output) -> None:
    invoke(out, SCHEDULED_EVENT)
    em.expire_logon_sessions()
    polls(out, clock)


def bad_secrets(local: LocalAws, em: EmSimulator, clock: FakeClock, out: Output) -> None:
    secret = json.dumps({"username": USERNAME, "password": PASSWORD})
    for broken in (
        secret[:-1],
        secret.replace('"username"', '"user"'),
        f"[{secret}]",
        secret.replace('",', '"', 1),
    ):
        put_secret(local, broken)
        invoke(out, SCHEDULED_EVENT)
        invoke(out, {"preflight": True, "sendTest": False})
        clock.advance(minutes=30)


def publish_failures(local: LocalAws, em: EmSimulator, clock: FakeClock, out: Output) -> None:
    boto3.client("sns").delete_topic(TopicArn=local.environment["TOPIC_ARN"])
    events = boto3.client("events")
    bus = local.environment["EVENT_BUS_NAME"]
    for rule in events.list_rules(EventBusName=bus)["Rules"]:
        ids = [
            t["Id"]
            for t in events.list_targets_by_rule(Rule=rule["Name"], EventBusName=bus)["Targets"]
        ]
        events.remove_targets(Rule=rule["Name"], EventBusName=bus, Ids=ids)
        events.delete_rule(Name=rule["Name"], EventBusName=bus)
    events.delete_event_bus(Name=bus)
    polls(out, clock)
    invoke(out, {"preflight": True, "sendTest": True})


def hostile_bodies(local: LocalAws, em: EmSimulator, clock: FakeClock, out: Output) -> None:
    for body in HOSTILE:
        em.inject("session", FaultResponse(200, body.read_bytes()))
        em.inject("logon", FaultResponse(500, body.read_bytes(), {"Content-Type": "text/html"}))
        invoke(out, SCHEDULED_EVENT)
        clock.advance(minutes=30)
        invoke(out, SCHEDULED_EVENT)


def echoing_em(
    local: LocalAws, em: EmSimulator, clock: FakeClock, out: Output, tokens: KnownTokens
) -> None:
    """An EM (or a proxy before it) whose error text repeats the token it was sent."""
    reflected = f"Session {tokens.upcoming()} is not valid"
    # Four answers: the request and urllib3's three retries.
    em.inject("session", FaultResponse(500, error_xml(500, reflected)), times=4)
    invoke(out, SCHEDULED_EVENT)


def preflights(local: LocalAws, em: EmSimulator, clock: FakeClock, out: Output) -> None:
    invoke(out, {"preflight": True, "sendTest": True})
    em.inject("query", FaultResponse.em_error(403, "Access denied."), times=5)
    invoke(out, {"preflight": True, "sendTest": False})
    put_secret(local, json.dumps({"username": USERNAME, "password": WRONG_PASSWORD}))
    invoke(out, {"preflight": True, "sendTest": True})


def happy_story(local: LocalAws, em: EmSimulator, clock: FakeClock, out: Output) -> None:
    polls(out, clock, 8)


# Scenario -> its steps, template parameters, and whether EM issues tokens in it.
HANDLER_SCENARIOS: dict[str, tuple[Callable[..., None], dict[str, str], bool]] = {
    "wrong password": (wrong_password, {}, False),
    "EM 500 until the retries give up": (em_500, {}, True),
    "401 on a data call, also after logging on again": (refused_token, {}, True),
    "every token expires": (expired_tokens, {}, True),
    "secrets that are not the expected JSON": (bad_secrets, {}, False),
    "SNS and EventBridge refuse every publish": (publish_failures, {}, True),
    "hostile bodies for a session and for the logon": (
        hostile_bodies,
        {"EmSessionIds": WATCHED},
        True,
    ),
    "preflight: test sent, 403 on the query, wrong password": (preflights, {}, True),
    "the happy story": (happy_story, {}, True),
}


@pytest.mark.parametrize("scenario", HANDLER_SCENARIOS)
def test_no_secret_leaves_the_handler(
    scenario: str,
    deploy: Callable[..., LocalAws],
    simulator: EmSimulator,
    story_clock: FakeClock,
    output: Output,
    tokens: KnownTokens,
    forbidden: Callable[[], dict[str, str]],
) -> None:
    steps, parameters, logs_on = HANDLER_SCENARIOS[scenario]
    local = deploy(**parameters)
    put_secret(local, json.dumps({"username": USERNAME, "password": PASSWORD}))

    steps(local, simulator, story_clock, output)
    keep_aws_state(output, local)

    assert bool(tokens.issued) == logs_on
    assert output.leaks(forbidden()) == []


def test_no_token_an_em_echoes_leaves_the_handler(
    deploy: Callable[..., LocalAws],
    simulator: EmSimulator,
    story_clock: FakeClock,
    output: Output,
    tokens: KnownTokens,
    forbidden: Callable[[], dict[str, str]],
) -> None:
    local = deploy(EmSessionIds=WATCHED)
    put_secret(local, json.dumps({"username": USERNAME, "password": PASSWORD}))

    echoing_em(local, simulator, story_clock, output, tokens)
    keep_aws_state(output, local)

    assert tokens.issued
    assert output.leaks(forbidden()) == []


def test_the_tls_failure_path_is_clean_too(
    deploy: Callable[..., LocalAws],
    story_clock: FakeClock,
    output: Output,
    forbidden: Callable[[], dict[str, str]],
    tmp_path: Path,
) -> None:
    local = deploy(ca_bundle=make_test_pki(tmp_path).ca_bundle)
    put_secret(local, json.dumps({"username": USERNAME, "password": PASSWORD}))

    polls(output, story_clock)
    invoke(output, {"preflight": True, "sendTest": True})
    keep_aws_state(output, local)

    assert output.leaks(forbidden()) == []


def test_an_unreachable_em_path_is_clean_too(
    deploy: Callable[..., LocalAws],
    story_clock: FakeClock,
    output: Output,
    forbidden: Callable[[], dict[str, str]],
) -> None:
    local = deploy(EmUrl="https://127.0.0.1:9")
    put_secret(local, json.dumps({"username": USERNAME, "password": PASSWORD}))

    polls(output, story_clock, 1)
    invoke(output, {"preflight": True, "sendTest": False})
    keep_aws_state(output, local)

    assert output.leaks(forbidden()) == []


# --- The local runner and the preflight check, as subprocesses ------------------------------


@pytest.fixture
def real_time_em(pki: TestPki, tokens: KnownTokens) -> Iterator[EmSimulator]:
    """An EM for the subprocesses, in this process so its tokens are known."""
    from datetime import UTC, datetime

    with EmSimulator(demo_story(datetime.now(UTC), pace=0.3), pki, password=PASSWORD) as em:
        yield em


def run_module(module: str, *arguments: str, password: str) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "POWERTOOLS_", "VEM_"))
    }
    environment["VEM_PASSWORD"] = password
    return subprocess.run(
        [sys.executable, "-m", module, *arguments, "--log-level", "DEBUG"],
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def no_fault(em: EmSimulator) -> None:
    """Leave the EM as it is."""


# Scenario -> module, its options, the password given, the EM's faults, and a phrase its
# output must hold (so the path is known to have run).
LOCAL_SCENARIOS: dict[str, tuple[str, list[str], str, Callable[[EmSimulator], None], str]] = {
    "make run, the story told": (
        "failover_local.run",
        ["--polls", "2", "--interval", "0"],
        PASSWORD,
        no_fault,
        '"channel": "eventbridge"',
    ),
    "make run, wrong password": (
        "failover_local.run",
        ["--polls", "1"],
        WRONG_PASSWORD,
        no_fault,
        "authentication failed",
    ),
    "make check --send-test": (
        "failover_local.check",
        ["--send-test"],
        PASSWORD,
        no_fault,
        "[TEST]",
    ),
    "make check, wrong password": (
        "failover_local.check",
        ["--send-test"],
        WRONG_PASSWORD,
        no_fault,
        "authentication",
    ),
    "make check, 403 on the query": (
        "failover_local.check",
        [],
        PASSWORD,
        lambda em: em.inject("query", FaultResponse.em_error(403, "Access denied."), times=5),
        "service-provider role",
    ),
}


@pytest.mark.e2e
@pytest.mark.parametrize("scenario", LOCAL_SCENARIOS)
def test_no_secret_leaves_the_local_runner(
    scenario: str,
    real_time_em: EmSimulator,
    pki: TestPki,
    tokens: KnownTokens,
    forbidden: Callable[[], dict[str, str]],
) -> None:
    module, arguments, password, prepare, phrase = LOCAL_SCENARIOS[scenario]
    prepare(real_time_em)

    result = run_module(
        module, "--vem-url", real_time_em.url, "--username", USERNAME,
        "--ca-bundle", str(pki.ca_bundle), *arguments, password=password,
    )  # fmt: skip

    assert phrase in result.stdout + result.stderr, result.stdout + result.stderr
    leaked = [
        name
        for name, value in forbidden().items()
        if value in result.stdout or value in result.stderr
    ]
    assert leaked == []
