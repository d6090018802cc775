"""Which tenant a session belongs to, from its failover plan.

A session names its plan but not its tenant, and plan names are unique only within a
tenant. The directory reads every plan in one paged query, keeps them between polls and
reads them again after `refresh_interval`, so a poll in which many sessions finish costs no
extra request per session. A name it cannot pin to one tenant is reported as such.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from aws_lambda_powertools import Logger

from veeam_em.errors import EmHttpError, EmResponseError
from veeam_em.models import CloudFailoverPlan, QueryResult

logger = Logger(child=True)

Resolution = Literal["resolved", "ambiguous", "unknown"]
RESOLVED: Resolution = "resolved"
AMBIGUOUS: Resolution = "ambiguous"
UNKNOWN: Resolution = "unknown"

DEFAULT_REFRESH_INTERVAL = timedelta(minutes=15)
# After a refused or unreadable plan query, try again sooner than a full interval.
RETRY_AFTER_FAILURE = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class TenantInfo:
    """The tenant of a plan name: one tenant (`resolved`), several (`ambiguous`, with the
    candidates' names) or none known (`unknown`)."""

    resolution: Resolution
    name: str | None = None
    uid: str | None = None
    plan_uid: str | None = None
    candidates: tuple[str, ...] = ()

    @classmethod
    def unknown(cls) -> TenantInfo:
        """No plan of that name is known."""
        return cls(UNKNOWN)


class PlanReader(Protocol):
    """What the directory needs from EM: `EmClient` satisfies it."""

    def query_failover_plans(self, page_size: int = 100) -> Iterator[QueryResult]:
        """Yield each page of failover plans."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


def resolve(plans: Iterable[CloudFailoverPlan], plan_name: str) -> TenantInfo:
    """The tenant of the plans called `plan_name` (compared without regard to case)."""
    wanted = plan_name.casefold()
    matching = [plan for plan in plans if plan.name.casefold() == wanted]
    tenants = {(plan.tenant_uid, plan.tenant_name) for plan in matching}
    if not matching or tenants == {(None, None)}:
        return TenantInfo.unknown()
    if len(tenants) > 1:
        names = sorted({name or uid or "(no tenant)" for uid, name in tenants})
        return TenantInfo(AMBIGUOUS, candidates=tuple(names))

    plan = matching[0]
    return TenantInfo(RESOLVED, name=plan.tenant_name, uid=plan.tenant_uid, plan_uid=plan.uid)


class PlanDirectory:
    """Every failover plan of one EM, cached across polls."""

    def __init__(
        self,
        *,
        refresh_interval: timedelta = DEFAULT_REFRESH_INTERVAL,
        page_size: int = 100,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._refresh_interval = refresh_interval
        self._page_size = page_size
        self._clock = clock
        self._plans: tuple[CloudFailoverPlan, ...] = ()
        self._loaded = False
        self._next_refresh: datetime | None = None

    @property
    def loaded(self) -> bool:
        """True once a complete read of the plans has succeeded."""
        return self._loaded

    @property
    def due(self) -> bool:
        """True when the plans have never been read or are older than the interval."""
        return self._next_refresh is None or self._clock() >= self._next_refresh

    def refresh_if_due(self, reader: PlanReader) -> bool:
        """Read the plans again if they are due; True if they were read now.

        A plan query EM refuses or answers with an unreadable page keeps the plans read
        before (or none) and is tried again after `RETRY_AFTER_FAILURE`; connection, TLS
        and authentication errors are the poll's own and propagate.
        """
        if not self.due:
            return False
        try:
            plans = self._read(reader)
        except (EmHttpError, EmResponseError) as error:
            self._next_refresh = self._clock() + min(RETRY_AFTER_FAILURE, self._refresh_interval)
            logger.warning(
                "failover plans unreadable; tenants stay as last read",
                extra={"error": str(error), "plans_known": len(self._plans)},
            )
            return False

        self._plans = plans
        self._loaded = True
        self._next_refresh = self._clock() + self._refresh_interval
        logger.info("failover plans read", extra={"plans": len(plans)})
        return True

    def tenant_for(self, plan_name: str) -> TenantInfo:
        """The tenant of the plan a session is named after."""
        return resolve(self._plans, plan_name)

    def _read(self, reader: PlanReader) -> tuple[CloudFailoverPlan, ...]:
        plans: list[CloudFailoverPlan] = []
        for page in reader.query_failover_plans(self._page_size):
            plans += page.plans
            if page.rejected:
                logger.warning(
                    "failover plans skipped: unreadable entities",
                    extra={"rejected": len(page.rejected)},
                )
        return tuple(plans)
