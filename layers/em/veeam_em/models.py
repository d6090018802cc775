"""Typed records for the EM resources the notifier reads.

Values stay in EM's own words (`State`, `Result` as EM writes them) so that an unknown
value from a newer EM passes through instead of breaking the poll.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

STATE_STOPPED = "Stopped"
RESULT_SUCCESS = "Success"
RESULT_WARNING = "Warning"
RESULT_FAILED = "Failed"
RESULT_NONE = "None"
TERMINAL_RESULTS = (RESULT_SUCCESS, RESULT_WARNING, RESULT_FAILED)
SESSION_UID_PREFIX = "urn:veeam:CloudFailoverSession:"
PLAN_UID_PREFIX = "urn:veeam:CloudFailoverPlan:"


@dataclass(frozen=True, slots=True)
class Link:
    """An EM `Link` element: a relation to another resource."""

    rel: str
    href: str
    type: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class CloudFailoverTask:
    """One VM's part of a failover session; EM gives tasks no ID, so `vm_name` names them."""

    vm_name: str
    state: str
    result: str
    progress: int | None
    creation_time: datetime | None
    end_time: datetime | None
    failure_message: str | None
    replica_point: str | None


@dataclass(frozen=True, slots=True)
class CloudFailoverSession:
    """A run of a cloud failover plan, as `GET /cloud/failoverSessions/{ID}?format=Entity`."""

    id: str
    uid: str
    name: str
    href: str | None
    job_type: str | None
    creation_time: datetime
    end_time: datetime | None
    state: str
    result: str
    progress: int | None
    failure_message: str | None
    tasks: tuple[CloudFailoverTask, ...]
    backup_server_name: str | None = None
    backup_server_href: str | None = None
    links: tuple[Link, ...] = field(default=(), repr=False)

    @property
    def is_terminal(self) -> bool:
        """True once EM reports the session stopped with a final result."""
        return self.state == STATE_STOPPED and self.result in TERMINAL_RESULTS

    @property
    def plan_name(self) -> str:
        """The failover plan's name; EM names each session after its plan."""
        return self.name


@dataclass(frozen=True, slots=True)
class LogonSession:
    """The body of a successful logon; the token itself travels in a response header."""

    session_id: str
    user_name: str | None
    href: str | None
    delete_href: str | None


@dataclass(frozen=True, slots=True)
class EntityRef:
    """A reference to an entity (`Ref` or `EntityRef`), with its alternate links."""

    uid: str
    name: str | None
    href: str | None
    type: str | None
    links: tuple[Link, ...] = ()

    @property
    def id(self) -> str:
        """The bare GUID at the end of the `UID` URN."""
        return self.uid.rsplit(":", 1)[-1]


@dataclass(frozen=True, slots=True)
class EntityReferences:
    """A list of references, as collection endpoints return it."""

    refs: tuple[EntityRef, ...]


@dataclass(frozen=True, slots=True)
class PagingInfo:
    """Where a query page stands; `next_href` is None on the last page."""

    page_num: int
    page_size: int
    pages_count: int
    first_href: str | None
    next_href: str | None
    last_href: str | None


@dataclass(frozen=True, slots=True)
class QueryResult:
    """One page of a query: full sessions (`format=Entities`) or references (`format=Refs`)."""

    sessions: tuple[CloudFailoverSession, ...]
    refs: tuple[EntityRef, ...]
    paging: PagingInfo | None
    rejected: tuple[Exception, ...] = ()
    """Entities on the page that could not be parsed, each an `EmResponseError`; the rest
    of the page is still usable."""
    plans: tuple[CloudFailoverPlan, ...] = ()
    """Full failover plans, for `type=CloudFailoverPlan&format=Entities`."""


@dataclass(frozen=True, slots=True)
class Error:
    """EM's `Error` body, sent with every error status."""

    message: str
    status_code: int | None
    status: str | None = None
    first_chance_exception_message: str | None = None


@dataclass(frozen=True, slots=True)
class CloudFailoverPlan:
    """A cloud failover plan and the tenant it belongs to, from the query service.

    Sessions carry their plan's name only, and plan names are not unique across tenants.
    """

    uid: str
    name: str
    tenant_uid: str | None
    tenant_name: str | None
    href: str | None = None

    @property
    def id(self) -> str:
        """The bare GUID at the end of the `UID` URN."""
        return self.uid.rsplit(":", 1)[-1]
