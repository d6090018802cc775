"""`make run` end to end: the local runner as a user starts it, reading what it prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from failover_local.em_simulator import DEMO_PASSWORD, EmSimulator
from failover_local.story import demo_story
from failover_local.tls import TestPki, make_test_pki

pytestmark = pytest.mark.e2e

REPOSITORY = Path(__file__).parents[2]
FINISHING = {
    "4be1d766-bf90-465a-8df1-2b949f7be762": "Success",
    "aa6845c2-6440-47b3-85e9-8895f3989886": "Warning",
    "5d3e8f21-7a6b-4c19-9e2d-1f0a8b7c6d53": "Failed",
    "c2f9a4b7-3e18-4d6a-b5c0-8e7f6a5d4c32": "Success",
    "f3b7d2a1-8c4e-4b6f-9a15-2e7d6c5b4a38": "Success",
}
OLD_SESSION = "0b7c2f3e-9d41-4c55-8a0e-6f1d2c3b4a50"
STILL_RUNNING = "e8a1d6c4-2b7f-4f3e-a9d8-7c6b5a4f3e29"
NORTHWIND_FAILED = "5d3e8f21-7a6b-4c19-9e2d-1f0a8b7c6d53"
USERNAME = "EM01\\svc-notifier"


def start(
    module: str, *arguments: str, password: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m failover_local.<module>` as a user would, without this test's AWS,
    Powertools or EM settings; `password` becomes `VEM_PASSWORD`."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "POWERTOOLS_", "VEM_"))
    }
    if password is not None:
        environment["VEM_PASSWORD"] = password
    return subprocess.run(
        [sys.executable, "-m", f"failover_local.{module}", *arguments],
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def run(*arguments: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    return start("run", *arguments, password=password)


def notifications(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def by_session(lines: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Session GUID -> channel -> result, failing on any duplicate."""
    seen: dict[str, dict[str, str]] = {}
    for line in lines:
        if line["channel"] == "sns":
            session, result = line["attributes"]["session_id"], line["attributes"]["result"]
        else:
            session, result = line["detail"]["sessionId"], line["detail"]["result"]
        assert line["channel"] not in seen.get(session, {}), f"duplicate for {session}"
        seen.setdefault(session, {})[line["channel"]] = result
    return seen


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def other_em(pki: TestPki) -> Iterator[EmSimulator]:
    """Another server speaking EM's API with its own certificate, on real time."""
    with EmSimulator(demo_story(datetime.now(UTC), pace=0.5), pki) as running:
        yield running


def event_type(line: dict[str, Any]) -> str:
    if line["channel"] == "sns":
        return str(line["attributes"]["event_type"])
    return f"failover.{line['detail']['alert']}"


def test_the_demo_tells_its_story_once_per_channel() -> None:
    result = run("--interval", "0.5")

    assert result.returncode == 0, result.stderr
    lines = notifications(result.stdout)
    ends = [line for line in lines if event_type(line) != "failover.stuck"]
    assert by_session(ends) == {
        session: {"sns": outcome, "eventbridge": outcome} for session, outcome in FINISHING.items()
    }
    stuck = [line for line in lines if event_type(line) == "failover.stuck"]
    assert sorted(line["channel"] for line in stuck) == ["eventbridge", "sns"]
    assert {line["detail"]["sessionId"] for line in stuck if "detail" in line} == {STILL_RUNNING}
    recovered = [line for line in lines if event_type(line) == "failover.recovered"]
    assert sorted(line["channel"] for line in recovered) == ["eventbridge", "sns"]
    assert [line["detail"]["recoveredFrom"] for line in recovered if "detail" in line] == [
        NORTHWIND_FAILED
    ]
    sns = [line for line in lines if line["channel"] == "sns"]
    assert all(line["subject"] and line["variants"]["sms"] for line in sns)


def test_another_em_is_polled_by_discovery(other_em: EmSimulator, pki: TestPki) -> None:
    result = run(
        "--vem-url", f"{other_em.url}/api", "--username", USERNAME,
        "--ca-bundle", str(pki.ca_bundle), "--polls", "8", "--interval", "0.5",
        password=DEMO_PASSWORD,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    received = by_session(notifications(result.stdout))
    assert {session: channels["sns"] for session, channels in received.items()} == FINISHING
    assert other_em.open_logon_sessions == 0


def test_another_em_is_polled_for_named_sessions(other_em: EmSimulator, pki: TestPki) -> None:
    result = run(
        "--vem-url", other_em.url, "--username", USERNAME, "--ca-bundle", str(pki.ca_bundle),
        "--session-id", OLD_SESSION, "--session-id", "c2f9a4b7-3e18-4d6a-b5c0-8e7f6a5d4c32",
        "--polls", "8", "--interval", "0.5",
        password=DEMO_PASSWORD,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    received = by_session(notifications(result.stdout))
    assert received == {
        OLD_SESSION: {"sns": "Success", "eventbridge": "Success"},
        "c2f9a4b7-3e18-4d6a-b5c0-8e7f6a5d4c32": {"sns": "Success", "eventbridge": "Success"},
    }


def test_a_certificate_that_does_not_verify_stops_the_run_with_one_clear_line(
    other_em: EmSimulator,
) -> None:
    result = run(
        "--vem-url", other_em.url, "--username", USERNAME, "--polls", "2", "--interval", "0",
        password=DEMO_PASSWORD,
    )  # fmt: skip

    assert result.returncode != 0
    assert result.stdout == ""
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot poll EM")
    assert "TLS certificate failure" in last
    assert other_em.host in last


def test_a_wrong_password_stops_the_run_as_an_authentication_failure(
    other_em: EmSimulator, pki: TestPki
) -> None:
    result = run(
        "--vem-url", other_em.url, "--username", USERNAME, "--ca-bundle", str(pki.ca_bundle),
        "--polls", "1", password="wrong",
    )  # fmt: skip

    assert result.returncode != 0
    assert "authentication failed" in result.stderr.strip().splitlines()[-1]
    assert "wrong" not in result.stderr


def test_a_real_em_needs_the_password_from_the_environment() -> None:
    result = run("--vem-url", "https://em.example.test:9398", "--username", USERNAME)

    assert result.returncode == 2
    assert "VEM_PASSWORD" in result.stderr
