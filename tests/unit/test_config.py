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

    assert [target.url for target in config.targets] == ["https://em01.example.test:9398/api"]
    assert config.targets[0].host == "em01.example.test:9398"
    assert config.targets[0].watched_session_ids == ()
    assert config.targets[0].ca_bundle is None
    assert config.first_sight_lookback == timedelta(minutes=15)


def test_session_ids_are_normalised_and_deduplicated() -> None:
    ids = "29EF45AC-5FC2-479A-BB40-7FA9C666600B, 29ef45ac-5fc2-479a-bb40-7fa9c666600b\n"
    config = Config.from_environ({**ENVIRONMENT, "EM_SESSION_IDS": ids})

    assert config.targets[0].watched_session_ids == ("29ef45ac-5fc2-479a-bb40-7fa9c666600b",)


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
        ("EVENT_BUS_NAME", "a b"),
        ("POWERTOOLS_LOG_LEVEL", "LOUD"),
        ("POWERTOOLS_METRICS_NAMESPACE", ""),
        ("MUTE_WINDOWS", "Sat 22:00-Sat 22:00"),
        ("MUTE_WINDOWS", "garbage"),
        ("NOTIFY_TIME_ZONE", "Mars/Base"),
        ("EM_TARGETS", "em02.example.test"),
        ("EM_TARGETS", '{"url": "https://em02.example.test"}'),
    ],
)
def test_a_bad_variable_is_named_in_the_error(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Config.from_environ({**ENVIRONMENT, variable: value})

    assert raised.value.variable == variable
    assert variable in str(raised.value)


EM_TARGETS = (Path(__file__).parents[1] / "fixtures" / "em-targets.json").read_text()


def test_more_ems_come_from_a_json_list() -> None:
    config = Config.from_environ({**ENVIRONMENT, "EM_TARGETS": EM_TARGETS})

    assert [target.host for target in config.targets] == [
        "em01.example.test:9398",
        "em02.example.test:9398",
        "em03.example.test",
    ]
    assert config.target("em03.example.test").watched_session_ids == (
        "29ef45ac-5fc2-479a-bb40-7fa9c666600b",
    )
    assert config.target(None) is config.targets[0]


@pytest.mark.parametrize(
    ("targets", "variable"),
    [
        ('[{"url": "https://em02.example.test"}]', "EM_TARGETS[0]"),
        ('[{"url": "http://em02", "secretArn": "x"}]', "EM_TARGETS[0].url"),
        (
            '[{"url": "https://em02", "secretArn": "arn:aws:secretsmanager:us-east-1:1:s"}]',
            "EM_TARGETS[0].secretArn",
        ),
        (
            '[{"url": "https://em01.example.test:9398", '
            '"secretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:x"}]',
            "EM_TARGETS",
        ),
        (
            '[{"url": "https://em02", "secretArn": "arn:aws:secretsmanager:us-east-1:123456789012:'
            'secret:x", "colour": "blue"}]',
            "EM_TARGETS[0]",
        ),
    ],
)
def test_a_bad_em_in_the_list_is_named(targets: str, variable: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Config.from_environ({**ENVIRONMENT, "EM_TARGETS": targets})

    assert raised.value.variable == variable


def test_an_em_not_configured_is_refused() -> None:
    config = Config.from_environ(ENVIRONMENT)

    with pytest.raises(ConfigError, match=r"em09\.example\.test"):
        config.target("em09.example.test")
