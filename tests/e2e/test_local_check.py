"""`make check` end to end: the preflight check as a user starts it, reading what it prints."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from failover_local.em_simulator import EmSimulator
from failover_local.story import demo_story
from failover_local.tls import TestPki, make_test_pki
from tests.e2e.test_local_runner import USERNAME, start

pytestmark = pytest.mark.e2e


def check(*arguments: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    return start("check", *arguments, password=password)


def lines(stdout: str) -> dict[str, str]:
    """Check name -> status (`ok` or `FAIL`)."""
    parsed = {}
    for line in stdout.splitlines():
        status, rest = line.split(maxsplit=1)
        parsed[rest[:36].strip()] = status
    return parsed


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def other_em(pki: TestPki) -> Iterator[EmSimulator]:
    with EmSimulator(demo_story(datetime.now(UTC)), pki) as running:
        yield running


def test_the_simulator_passes_every_check_and_the_test_reaches_both_subscribers() -> None:
    result = check("--send-test")

    assert result.returncode == 0, result.stdout + result.stderr
    assert lines(result.stdout) == {
        "credentials": "ok",
        "logon": "ok",
        "failover sessions": "ok",
        "state table": "ok",
        "topic": "ok",
        "event bus": "ok",
        "test notification (sns)": "ok",
        "test notification (eventbridge)": "ok",
        "received by subscriber (sns)": "ok",
        "received by subscriber (eventbridge)": "ok",
    }
    assert "[TEST]" in result.stdout


def test_a_wrong_password_fails_the_logon_line_and_the_exit_code(
    other_em: EmSimulator, pki: TestPki
) -> None:
    result = check(
        "--vem-url", other_em.url, "--username", USERNAME, "--ca-bundle", str(pki.ca_bundle),
        password="wrong-password-for-check",
    )  # fmt: skip

    assert result.returncode == 1
    assert lines(result.stdout)["logon"] == "FAIL"
    assert "authentication" in result.stdout
    assert "wrong-password-for-check" not in result.stdout + result.stderr


def test_the_em_options_are_checked_as_make_run_checks_them() -> None:
    result = check("--username", USERNAME)

    assert result.returncode == 2
    assert "--username needs --vem-url" in result.stderr
