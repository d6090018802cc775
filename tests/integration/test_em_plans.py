"""Failover plans and their tenants, read from the EM simulator in one paged query."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from failover_local.em_simulator import DEMO_PASSWORD, EmSimulator, FaultResponse
from failover_local.story import DEMO_PLANS, ScriptedPlan, demo_story
from failover_local.tls import TestPki
from failover_poller.plans import PlanDirectory
from tests.fakes import FakeClock
from veeam_em.client import EmClient
from veeam_em.errors import EmHttpError

pytestmark = pytest.mark.integration

USER = "EM01\\svc-notifier"
STORY_START = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
# A plan name two tenants both use: the notifier must say so rather than pick one.
SHARED_NAME_PLANS = (
    ScriptedPlan("0e5a6b7c-8d9e-4fa0-b1c2-d3e4f5a6b7c8", "Quarterly DR Test", "Contoso Ltd"),
    ScriptedPlan("1f6b7c8d-9eaf-40b1-82d3-e4f5a6b7c8d9", "Quarterly DR Test", "Fabrikam Inc"),
)


@pytest.fixture
def simulator(pki: TestPki) -> Iterator[EmSimulator]:
    story = demo_story(STORY_START)
    story = replace(story, plans=story.plans + SHARED_NAME_PLANS)
    with EmSimulator(story, pki, clock=lambda: STORY_START) as running:
        yield running


@pytest.fixture
def client(simulator: EmSimulator) -> Iterator[EmClient]:
    with EmClient(
        simulator.url, USER, DEMO_PASSWORD, ca_bundle=str(simulator.ca_bundle)
    ) as logged_on:
        yield logged_on


def test_every_plan_arrives_with_its_tenant_across_pages(
    client: EmClient, simulator: EmSimulator
) -> None:
    pages = list(client.query_failover_plans(page_size=2))

    plans = [plan for page in pages for plan in page.plans]
    assert len(pages) == 4
    assert simulator.request_counts["plans"] == 4
    assert simulator.request_counts["query"] == 0
    assert {(plan.name, plan.tenant_name) for plan in plans} == {
        *((plan.name, plan.tenant_name) for plan in DEMO_PLANS),
        ("Quarterly DR Test", "Contoso Ltd"),
        ("Quarterly DR Test", "Fabrikam Inc"),
    }
    assert all(
        plan.tenant_uid and plan.tenant_uid.startswith("urn:veeam:CloudTenant:") for plan in plans
    )


def test_a_name_filter_finds_the_plans_of_that_name(client: EmClient) -> None:
    pages = client.query_failover_plans(filter_expression='Name=="Quarterly DR Test"')

    tenants = sorted(plan.tenant_name or "" for page in pages for plan in page.plans)

    assert tenants == ["Contoso Ltd", "Fabrikam Inc"]


def test_the_directory_reads_plans_once_for_many_sessions(
    client: EmClient, simulator: EmSimulator
) -> None:
    clock = FakeClock(STORY_START)
    directory = PlanDirectory(refresh_interval=timedelta(minutes=15), clock=clock)

    for _ in range(5):  # five polls a minute apart, each finishing every demo session
        directory.refresh_if_due(client)
        tenants = {plan.name: directory.tenant_for(plan.name) for plan in DEMO_PLANS}
        clock.advance(minutes=1)

    assert simulator.request_counts["plans"] == 1
    assert tenants["Northwind Failover Plan"].name == "Northwind Traders"
    assert {tenant.resolution for tenant in tenants.values()} == {"resolved"}
    assert directory.tenant_for("Quarterly DR Test").candidates == ("Contoso Ltd", "Fabrikam Inc")


def test_an_em_that_refuses_the_plan_query_leaves_tenants_unknown(
    client: EmClient, simulator: EmSimulator
) -> None:
    simulator.inject("plans", FaultResponse.em_error(400, "Query type is not supported."))
    directory = PlanDirectory()

    assert directory.refresh_if_due(client) is False
    assert directory.tenant_for("Contoso Failover Plan").resolution == "unknown"
    with pytest.raises(EmHttpError):
        simulator.inject("plans", FaultResponse.em_error(400, "Query type is not supported."))
        list(client.query_failover_plans())
