"""The configuration is read once from the environment and fails fast naming the variable."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from failover_poller.config import Config, ConfigError

ENVIRONMENT = json.loads((Path(__file__).parents[1] / "fixtures" / "environment.json").read_text())


def test_a_complete_environment_is_read_with_defaults() -> None:
    config = Config.from_environ(ENVIRONMENT)

    assert config.em_url == "https://em01.example.test:9398/api"
    assert config.watched_session_ids == ()
    assert config.first_sight_lookback == timedelta(minutes=15)
    assert config.em_ca_bundle is None


def test_session_ids_are_normalised_and_deduplicated() -> None:
    ids = "29EF45AC-5FC2-479A-BB40-7FA9C666600B, 29ef45ac-5fc2-479a-bb40-7fa9c666600b\n"
    config = Config.from_environ({**ENVIRONMENT, "EM_SESSION_IDS": ids})

    assert config.watched_session_ids == ("29ef45ac-5fc2-479a-bb40-7fa9c666600b",)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("EM_URL", ""),
        ("EM_URL", "http://em01.example.test:9399"),
        ("EM_SECRET_ARN", "em-credentials"),
        ("TOPIC_ARN", ""),
        ("STATE_TABLE_NAME", " "),
        ("EVENT_BUS_NAME", ""),
        ("EM_SESSION_IDS", "Contoso Failover Plan"),
        ("FIRST_SIGHT_LOOKBACK_MINUTES", "soon"),
        ("STATE_TTL_DAYS", "1"),
        ("EM_READ_TIMEOUT_SECONDS", "-1"),
        ("EM_CA_BUNDLE", "/nonexistent/em-ca.pem"),
        ("EM_CA_BUNDLE", "MIIBszCCAVmgAwIBAgIUJ2"),
        ("EM_CA_BUNDLE", "-----BEGIN PRIVATE KEY-----\nMIGHAgEA\n-----END PRIVATE KEY-----"),
        ("UNHEALTHY_AFTER_POLLS", "0"),
    ],
)
def test_a_bad_variable_is_named_in_the_error(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Config.from_environ({**ENVIRONMENT, variable: value})

    assert raised.value.variable == variable
    assert variable in str(raised.value)
