"""The few errors the EM client raises, so callers can react by kind, not by message text."""

from __future__ import annotations


class EmError(Exception):
    """Base class of every error raised while talking to EM."""


class EmConnectionError(EmError):
    """EM could not be reached: DNS, refused connection, timeout, reset."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"EM unreachable at {host}: {reason}")
        self.host = host
        self.reason = reason


class EmTlsError(EmError):
    """EM's TLS certificate did not verify against the configured CA bundle."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"TLS certificate failure for EM at {host}: {reason}")
        self.host = host
        self.reason = reason


class EmAuthenticationError(EmError):
    """EM refused the credentials or the token (HTTP 401), or gave no usable token."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"authentication failed at EM {host}: {reason}")
        self.host = host
        self.reason = reason


class EmHttpError(EmError):
    """EM answered with an error status; `status` is the HTTP code, `message` EM's own text."""

    def __init__(self, host: str, method: str, path: str, status: int, message: str) -> None:
        super().__init__(f"EM {host} answered {status} to {method} {path}: {message}")
        self.host = host
        self.method = method
        self.path = path
        self.status = status
        self.message = message


class EmNotFoundError(EmHttpError):
    """EM answered 404: the session (or route) does not exist there."""


class EmResponseError(EmError):
    """A body that is not the EM XML that was expected.

    `source` names where the body came from (a URL or a file), `expected` what the parser
    wanted and `found` what it got instead, so the message alone tells what went wrong.
    """

    def __init__(
        self, source: str, expected: str, found: str, session_id: str | None = None
    ) -> None:
        where = source if session_id is None else f"{source} (session {session_id})"
        super().__init__(f"unexpected EM response from {where}: expected {expected}, found {found}")
        self.source = source
        self.expected = expected
        self.found = found
        self.session_id = session_id
