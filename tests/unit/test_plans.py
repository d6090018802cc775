"""A session's tenant comes from its failover plan, read in bulk and kept between polls."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from failover_poller.plans import PlanDirectory, TenantInfo
from tests.fakes import FIXTURES, FakeClock
from veeam_em.errors import EmConnectionError, EmError, EmHttpError, EmResponseError
from veeam_em.models import QueryResult
from veeam_em.parser import parse_failover_plans

PLANS_PAGE = FIXTURES / "em" / "query-result-failover-plans-entities.xml"
SESSIONS_PAGE = FIXTURES / "em" / "query-result-failover-sessions-entities.xml"


def plans_page() -> QueryResult:
    return parse_failover_plans(PLANS_PAGE.read_bytes(), str(PLANS_PAGE))


@dataclass
class FakePlanReader:
    """EM's plan query: each call answers with the next script entry (pages or an error)."""

    answers: list[list[QueryResult] | EmError] = field(default_factory=list)
    calls: int = 0

    def query_failover_plans(self, page_size: int = 100) -> Iterator[QueryResult]:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, EmError):
            raise answer
        yield from answer


def test_a_page_of_plans_parses_with_tenants_in_any_order() -> None:
    page = plans_page()

    by_name = {(plan.name, plan.tenant_name) for plan in page.plans}
    assert ("Northwind Failover Plan", "Northwind Traders") in by_name
    assert ("Contoso Failover Plan", "Contoso Ltd") in by_name
    northwind = next(plan for plan in page.plans if plan.name == "Northwind Failover Plan")
    assert northwind.id == "8b2e3c4d-5f60-4172-ac83-9d0e1f2a3b43"
    assert northwind.tenant_uid == "urn:veeam:CloudTenant:1d6b8f6e-2c4a-4b1e-9f3d-5a7c9e1b3d50"


def test_a_plan_without_tenant_is_kept_and_one_without_uid_is_set_aside() -> None:
    page = plans_page()

    orphan = next(plan for plan in page.plans if plan.name == "Orphaned Plan")
    assert (orphan.tenant_uid, orphan.tenant_name, orphan.href) == (None, None, None)
    assert len(page.plans) == 5
    assert [type(error) for error in page.rejected] == [EmResponseError]
    assert page.paging is not None and page.paging.next_href is None


def test_a_sessions_page_holds_no_plans_and_a_plans_page_no_sessions() -> None:
    sessions = parse_failover_plans(SESSIONS_PAGE.read_bytes(), str(SESSIONS_PAGE))

    assert sessions.plans == ()
    assert plans_page().sessions == ()


def test_a_plan_name_of_one_tenant_resolves_to_it() -> None:
    directory = PlanDirectory()
    directory.refresh_if_due(FakePlanReader([[plans_page()]]))

    tenant = directory.tenant_for("Northwind Failover Plan")

    assert tenant == TenantInfo(
        "resolved",
        name="Northwind Traders",
        uid="urn:veeam:CloudTenant:1d6b8f6e-2c4a-4b1e-9f3d-5a7c9e1b3d50",
        plan_uid="urn:veeam:CloudFailoverPlan:8b2e3c4d-5f60-4172-ac83-9d0e1f2a3b43",
    )
    assert directory.tenant_for("northwind failover plan").name == "Northwind Traders"


def test_a_plan_name_shared_by_two_tenants_is_ambiguous_not_guessed() -> None:
    directory = PlanDirectory()
    directory.refresh_if_due(FakePlanReader([[plans_page()]]))

    tenant = directory.tenant_for("Quarterly DR Test")

    assert tenant.resolution == "ambiguous"
    assert tenant.name is None
    assert tenant.candidates == ("Contoso Ltd", "Fabrikam Inc")


@pytest.mark.parametrize("name", ["Orphaned Plan", "A plan EM does not know"])
def test_a_plan_without_tenant_or_unknown_to_em_is_unknown(name: str) -> None:
    directory = PlanDirectory()
    directory.refresh_if_due(FakePlanReader([[plans_page()]]))

    assert directory.tenant_for(name) == TenantInfo.unknown()


def test_plans_are_read_once_per_refresh_interval_however_many_sessions_end() -> None:
    clock = FakeClock(datetime(2026, 6, 16, 6, 0, tzinfo=UTC))
    reader = FakePlanReader([[plans_page()], [QueryResult((), (), None)]])
    directory = PlanDirectory(refresh_interval=timedelta(minutes=15), clock=clock)

    for _ in range(3):  # three polls within the interval, each with sessions to enrich
        directory.refresh_if_due(reader)
        names = [directory.tenant_for("Contoso Failover Plan").name for _ in range(50)]
        clock.advance(minutes=4)

    assert reader.calls == 1
    assert set(names) == {"Contoso Ltd"}

    clock.advance(minutes=4)  # 16 minutes after the first read
    assert directory.refresh_if_due(reader) is True
    assert reader.calls == 2
    assert directory.tenant_for("Contoso Failover Plan").resolution == "unknown"


def test_a_refused_plan_query_keeps_the_plans_read_before_and_retries_sooner() -> None:
    clock = FakeClock(datetime(2026, 6, 16, 6, 0, tzinfo=UTC))
    refused = EmHttpError("em01.example.test:9398", "GET", "/api/query", 400, "Bad query")
    reader = FakePlanReader([[plans_page()], refused, [plans_page()]])
    directory = PlanDirectory(refresh_interval=timedelta(hours=1), clock=clock)
    directory.refresh_if_due(reader)

    clock.advance(hours=1)
    assert directory.refresh_if_due(reader) is False
    assert directory.tenant_for("Contoso Failover Plan").name == "Contoso Ltd"

    clock.advance(minutes=5)
    assert directory.refresh_if_due(reader) is True
    assert reader.calls == 3


def test_a_directory_never_read_knows_no_tenant() -> None:
    refused = EmHttpError("em01.example.test:9398", "GET", "/api/query", 404, "Not found")
    directory = PlanDirectory()

    directory.refresh_if_due(FakePlanReader([refused]))

    assert directory.loaded is False
    assert directory.tenant_for("Contoso Failover Plan").resolution == "unknown"


def test_an_unreachable_em_is_the_polls_error_not_the_directorys() -> None:
    down = EmConnectionError("em01.example.test:9398", "[Errno 111] Connection refused")
    directory = PlanDirectory()

    with pytest.raises(EmConnectionError):
        directory.refresh_if_due(FakePlanReader([down]))
    assert directory.due is True
