"""The EM adapter: credentials refreshed once on an authentication failure, never more."""

from __future__ import annotations

from datetime import UTC, datetime
from types import TracebackType
from typing import ClassVar

import pytest

from failover_poller.em_source import Credentials, EmSessionSource, discovery_filter
from veeam_em.client import Timeouts
from veeam_em.errors import EmAuthenticationError

HOST = "em01.example.test:9398"


class RefusingClient:
    """An EM client whose logon accepts only one password."""

    logons: ClassVar[list[str]] = []

    def __init__(self, url: str, username: str, password: str, **_: object) -> None:
        self.password = password

    def __enter__(self) -> RefusingClient:
        RefusingClient.logons.append(self.password)
        if self.password != "rotated":
            raise EmAuthenticationError(HOST, "EM refused the user name or password (401)")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def discover_failover_sessions(self, filter_expression: str, page_size: int) -> list[object]:
        return []


def source(passwords: list[str]) -> EmSessionSource:
    def credentials(refresh: bool) -> Credentials:
        return Credentials("EM01\\svc-notifier", passwords[1] if refresh else passwords[0])

    RefusingClient.logons = []
    return EmSessionSource(
        f"https://{HOST}/api",
        credentials,
        ca_bundle=None,
        timeouts=Timeouts(),
        page_size=100,
        client_factory=RefusingClient,  # type: ignore[arg-type]
    )


def test_a_rotated_password_is_read_again_and_used() -> None:
    fetched = source(["old", "rotated"]).fetch((), datetime.now(UTC))

    assert fetched.sessions == ()
    assert RefusingClient.logons == ["old", "rotated"]


def test_a_wrong_password_is_tried_twice_at_most() -> None:
    with pytest.raises(EmAuthenticationError):
        source(["wrong", "still-wrong"]).fetch((), datetime.now(UTC))

    assert RefusingClient.logons == ["wrong", "still-wrong"]


def test_an_unchanged_secret_is_not_tried_twice() -> None:
    with pytest.raises(EmAuthenticationError):
        source(["wrong", "wrong"]).fetch((), datetime.now(UTC))

    assert RefusingClient.logons == ["wrong"]


def test_credentials_never_show_the_password() -> None:
    assert "s3cret" not in repr(Credentials("user", "s3cret"))


def test_the_discovery_filter_asks_for_running_and_recently_ended_sessions() -> None:
    since = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)

    assert discovery_filter(since) == 'State!=Stopped,EndTime>="2026-01-02T03:04:05Z"'
