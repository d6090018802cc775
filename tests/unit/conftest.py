"""Unit tests run without a network: any socket a test opens fails it."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_sockets(socket_disabled: None) -> None:
    """Switch sockets off for every test under tests/unit (pytest-socket re-enables them)."""
