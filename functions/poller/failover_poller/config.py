"""The poller's configuration, read from the environment once and validated up front."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, timedelta, tzinfo
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from failover_poller.alerts import AlertPolicy, WeeklyWindow
from veeam_em.client import Timeouts, normalize_base_url

_BUS_NAME = re.compile(r"[A-Za-z0-9._\-/]{1,256}|arn:aws[a-z-]*:events:.+")
_ARN = re.compile(r"arn:aws[a-z-]*:[a-z0-9-]+:[a-z0-9-]*:\d{12}:.+")


class ConfigError(ValueError):
    """A missing or invalid environment variable; the message names it."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"configuration error: {variable} {problem}")
        self.variable = variable


@dataclass(frozen=True, slots=True)
class EmTarget:
    """One EM to watch, with its own credentials secret and CA bundle."""

    url: str
    secret_arn: str
    ca_bundle: str | None
    watched_session_ids: tuple[str, ...]

    @property
    def host(self) -> str:
        """`host:port`, the EM's name in state, notifications and logs."""
        return urlsplit(self.url).netloc


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the poller needs to know, validated."""

    targets: tuple[EmTarget, ...]
    state_table_name: str
    topic_arn: str
    event_bus_name: str
    first_sight_lookback: timedelta
    state_ttl: timedelta
    page_size: int
    em_timeouts: Timeouts
    unhealthy_after_polls: int
    alerts: AlertPolicy = field(default_factory=AlertPolicy)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Config:
        config = cls._read(environ)
        # Powertools reads these itself; checked here so that a bad one is named up front.
        reader = _Reader(environ)
        reader.required("POWERTOOLS_METRICS_NAMESPACE")
        level = (reader.optional("POWERTOOLS_LOG_LEVEL") or "INFO").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(
                "POWERTOOLS_LOG_LEVEL", f"must be DEBUG, INFO, WARNING or ERROR, got {level[:20]!r}"
            )
        return config

    @classmethod
    def _read(cls, environ: Mapping[str, str]) -> Config:
        """Read and check every variable; raise `ConfigError` naming the first bad one.

        `EM_URL`, `EM_SECRET_ARN`, `EM_CA_BUNDLE` and `EM_SESSION_IDS` name the first EM;
        `EM_TARGETS`, a JSON list of `{"url", "secretArn", "caBundle", "sessionIds"}`,
        adds more.
        """
        reader = _Reader(environ)
        first = EmTarget(
            url=reader.em_url("EM_URL", reader.required("EM_URL")),
            secret_arn=reader.arn("EM_SECRET_ARN", reader.required("EM_SECRET_ARN")),
            ca_bundle=reader.ca_bundle("EM_CA_BUNDLE", reader.optional("EM_CA_BUNDLE")),
            watched_session_ids=reader.guids("EM_SESSION_IDS", reader.optional("EM_SESSION_IDS")),
        )
        return cls(
            targets=reader.unique((first, *reader.targets("EM_TARGETS"))),
            state_table_name=reader.required("STATE_TABLE_NAME"),
            topic_arn=reader.arn("TOPIC_ARN", reader.required("TOPIC_ARN")),
            event_bus_name=reader.matching("EVENT_BUS_NAME", _BUS_NAME, "an event bus name"),
            first_sight_lookback=timedelta(
                minutes=reader.number("FIRST_SIGHT_LOOKBACK_MINUTES", 15, 0, 60 * 24 * 30)
            ),
            state_ttl=timedelta(days=reader.number("STATE_TTL_DAYS", 90, 31, 3650)),
            page_size=int(reader.number("EM_PAGE_SIZE", 100, 1, 1000)),
            em_timeouts=Timeouts(
                connect=reader.number("EM_CONNECT_TIMEOUT_SECONDS", 5, 0.1, 60),
                read=reader.number("EM_READ_TIMEOUT_SECONDS", 30, 0.1, 300),
            ),
            unhealthy_after_polls=int(reader.number("UNHEALTHY_AFTER_POLLS", 3, 1, 1440)),
            alerts=AlertPolicy(
                time_zone=reader.time_zone("NOTIFY_TIME_ZONE"),
                stuck_after=timedelta(
                    minutes=reader.number("STUCK_AFTER_MINUTES", 240, 0.01, 60 * 24 * 30)
                ),
                stuck_without_progress=timedelta(
                    minutes=reader.number("STUCK_WITHOUT_PROGRESS_MINUTES", 120, 0.01, 60 * 24 * 30)
                ),
                notify_started=reader.flag("NOTIFY_STARTED"),
                muted_plans=frozenset(
                    name.strip().lower()
                    for name in (reader.optional("MUTED_PLANS") or "").split(",")
                    if name.strip()
                ),
                mute_windows=reader.windows("MUTE_WINDOWS"),
                plan_refresh=timedelta(
                    minutes=reader.number("PLAN_REFRESH_MINUTES", 15, 1, 60 * 24)
                ),
            ),
        )

    def target(self, em_host: str | None) -> EmTarget:
        """The EM named by `em_host` (the first one for None)."""
        if em_host is None:
            return self.targets[0]
        for target in self.targets:
            if target.host == em_host:
                return target
        raise ConfigError("EM_TARGETS", f"has no EM {em_host!r}")


class _Reader:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def optional(self, name: str) -> str | None:
        value = self._environ.get(name, "").strip()
        return value or None

    def required(self, name: str) -> str:
        value = self.optional(name)
        if value is None:
            raise ConfigError(name, "is required but not set")
        return value

    def matching(self, name: str, pattern: re.Pattern[str], what: str) -> str:
        value = self.required(name)
        if not pattern.fullmatch(value):
            raise ConfigError(name, f"must be {what}, got {value[:80]!r}")
        return value

    @staticmethod
    def arn(name: str, value: str) -> str:
        if not _ARN.fullmatch(value):
            raise ConfigError(name, f"must be an ARN, got {value[:80]!r}")
        return value

    @staticmethod
    def em_url(name: str, value: str) -> str:
        try:
            return normalize_base_url(value)
        except ValueError as error:
            raise ConfigError(name, str(error)) from error

    @staticmethod
    def ca_bundle(name: str, value: str | None) -> str | None:
        if value is None:
            return None
        if "-----BEGIN" in value:
            if "-----BEGIN CERTIFICATE-----" not in value:
                raise ConfigError(name, "holds PEM text but no certificate")
            return value
        if not os.path.isfile(value):
            raise ConfigError(name, "must be PEM text or the path of a PEM file")
        return value

    @staticmethod
    def guids(name: str, value: str | None) -> tuple[str, ...]:
        ids: list[str] = []
        for item in filter(None, (part.strip() for part in re.split(r"[,\s]+", value or ""))):
            try:
                ids.append(str(uuid.UUID(item)))
            except ValueError as error:
                raise ConfigError(name, f"holds {item[:60]!r}, not a session GUID") from error
        return tuple(dict.fromkeys(ids))

    def targets(self, name: str) -> tuple[EmTarget, ...]:
        text = self.optional(name)
        if text is None:
            return ()
        try:
            entries: Any = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(name, f"must be a JSON list: {error.msg}") from error
        if not isinstance(entries, list):
            raise ConfigError(name, "must be a JSON list of EMs")
        return tuple(self._target(f"{name}[{index}]", entry) for index, entry in enumerate(entries))

    def _target(self, name: str, entry: Any) -> EmTarget:
        if not isinstance(entry, dict):
            raise ConfigError(name, "must be an object with url and secretArn")
        unknown = set(entry) - {"url", "secretArn", "caBundle", "sessionIds"}
        if unknown:
            raise ConfigError(name, f"has unknown keys {sorted(unknown)}")

        def text(key: str) -> str | None:
            value = entry.get(key)
            if isinstance(value, list):
                value = ",".join(map(str, value))
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{name}.{key}", "must be a string")
            return value.strip() or None if value else None

        url, secret = text("url"), text("secretArn")
        if url is None or secret is None:
            raise ConfigError(name, "needs both url and secretArn")
        return EmTarget(
            url=self.em_url(f"{name}.url", url),
            secret_arn=self.arn(f"{name}.secretArn", secret),
            ca_bundle=self.ca_bundle(f"{name}.caBundle", text("caBundle")),
            watched_session_ids=self.guids(f"{name}.sessionIds", text("sessionIds")),
        )

    @staticmethod
    def unique(targets: tuple[EmTarget, ...]) -> tuple[EmTarget, ...]:
        hosts = [target.host for target in targets]
        for host in hosts:
            if hosts.count(host) > 1:
                raise ConfigError("EM_TARGETS", f"names EM {host} twice")
        return targets

    def time_zone(self, name: str) -> tzinfo:
        text = self.optional(name)
        if text is None or text.upper() == "UTC":
            return UTC
        try:
            return ZoneInfo(text)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ConfigError(
                name, f"is not a time zone name like Europe/Berlin: {text!r}"
            ) from error

    def flag(self, name: str) -> bool:
        text = (self.optional(name) or "false").lower()
        if text not in ("true", "false"):
            raise ConfigError(name, f"must be true or false, got {text[:20]!r}")
        return text == "true"

    def windows(self, name: str) -> tuple[WeeklyWindow, ...]:
        parts = [part for part in (self.optional(name) or "").split(";") if part.strip()]
        try:
            return tuple(WeeklyWindow.parse(part) for part in parts)
        except ValueError as error:
            raise ConfigError(name, str(error)) from error

    def number(self, name: str, default: float, low: float, high: float) -> float:
        text = self.optional(name)
        if text is None:
            return default
        try:
            value = float(text)
        except ValueError as error:
            raise ConfigError(name, f"must be a number, got {text[:40]!r}") from error
        if not low <= value <= high:
            raise ConfigError(name, f"must be from {low:g} to {high:g}, got {value:g}")
        return value
