"""The poller's configuration, read from the environment once and validated up front."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from veeam_em.client import Timeouts, normalize_base_url

_ARN = re.compile(r"arn:aws[a-z-]*:[a-z0-9-]+:[a-z0-9-]*:\d{12}:.+")


class ConfigError(ValueError):
    """A missing or invalid environment variable; the message names it."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"configuration error: {variable} {problem}")
        self.variable = variable


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the poller needs to know, validated."""

    em_url: str
    em_secret_arn: str
    em_ca_bundle: str | None
    watched_session_ids: tuple[str, ...]
    state_table_name: str
    topic_arn: str
    event_bus_name: str
    first_sight_lookback: timedelta
    state_ttl: timedelta
    page_size: int
    em_timeouts: Timeouts
    unhealthy_after_polls: int

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Config:
        """Read and check every variable; raise `ConfigError` naming the first bad one."""
        reader = _Reader(environ)
        return cls(
            em_url=reader.em_url("EM_URL"),
            em_secret_arn=reader.arn("EM_SECRET_ARN"),
            em_ca_bundle=reader.ca_bundle("EM_CA_BUNDLE"),
            watched_session_ids=reader.guids("EM_SESSION_IDS"),
            state_table_name=reader.required("STATE_TABLE_NAME"),
            topic_arn=reader.arn("TOPIC_ARN"),
            event_bus_name=reader.required("EVENT_BUS_NAME"),
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
        )


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

    def arn(self, name: str) -> str:
        value = self.required(name)
        if not _ARN.fullmatch(value):
            raise ConfigError(name, f"must be an ARN, got {value[:80]!r}")
        return value

    def em_url(self, name: str) -> str:
        try:
            return normalize_base_url(self.required(name))
        except ValueError as error:
            raise ConfigError(name, str(error)) from error

    def ca_bundle(self, name: str) -> str | None:
        value = self.optional(name)
        if value is None:
            return None
        if "-----BEGIN" in value:
            if "-----BEGIN CERTIFICATE-----" not in value:
                raise ConfigError(name, "holds PEM text but no certificate")
            return value
        if not os.path.isfile(value):
            raise ConfigError(name, "must be PEM text or the path of a PEM file")
        return value

    def guids(self, name: str) -> tuple[str, ...]:
        text = self.optional(name) or ""
        ids: list[str] = []
        for item in filter(None, (part.strip() for part in re.split(r"[,\s]+", text))):
            try:
                ids.append(str(uuid.UUID(item)))
            except ValueError as error:
                raise ConfigError(name, f"holds {item[:60]!r}, not a session GUID") from error
        return tuple(dict.fromkeys(ids))

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
