"""The EM client against the EM simulator, over real HTTPS verified with the test CA."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from urllib3.util.retry import Retry

from failover_local.em_simulator import DEMO_PASSWORD, EmSimulator, FaultResponse
from failover_local.story import demo_story
from failover_local.tls import TestPki, make_test_pki
from veeam_em.client import EmClient, default_retry
from veeam_em.errors import (
    EmAuthenticationError,
    EmConnectionError,
    EmHttpError,
    EmNotFoundError,
    EmResponseError,
    EmTlsError,
)

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parents[1] / "fixtures" / "em"
USER = "EM01\\svc-notifier"
STORY_START = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
NOW = STORY_START + timedelta(seconds=10)  # every session but Woodgrove has ended
ALL_GUIDS = {
    "0b7c2f3e-9d41-4c55-8a0e-6f1d2c3b4a50",
    "4be1d766-bf90-465a-8df1-2b949f7be762",
    "aa6845c2-6440-47b3-85e9-8895f3989886",
    "5d3e8f21-7a6b-4c19-9e2d-1f0a8b7c6d53",
    "c2f9a4b7-3e18-4d6a-b5c0-8e7f6a5d4c32",
    "e8a1d6c4-2b7f-4f3e-a9d8-7c6b5a4f3e29",
    "f3b7d2a1-8c4e-4b6f-9a15-2e7d6c5b4a38",
}
OLD_CONTOSO = "0b7c2f3e-9d41-4c55-8a0e-6f1d2c3b4a50"  # ended 20 days before the story
NORTHWIND = "5d3e8f21-7a6b-4c19-9e2d-1f0a8b7c6d53"
UNKNOWN = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def simulator(pki: TestPki) -> Iterator[EmSimulator]:
    with EmSimulator(demo_story(STORY_START), pki, clock=lambda: NOW) as running:
        yield running


def quick_retry(total: int = 3) -> Retry:
    """The production retry policy without its backoff, so tests do not sleep."""
    return default_retry(total).new(backoff_factor=0.0, backoff_jitter=0.0)


def client_for(
    simulator: EmSimulator,
    *,
    url: str | None = None,
    password: str = DEMO_PASSWORD,
    ca_bundle: Path | None = None,
    max_body_bytes: int = 1024 * 1024,
) -> EmClient:
    return EmClient(
        url or simulator.url,
        USER,
        password,
        ca_bundle=str(ca_bundle or simulator.ca_bundle),
        retry=quick_retry(),
        max_body_bytes=max_body_bytes,
    )


def fixture_body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# --- Logon and logout ------------------------------------------------------------------


def test_logon_keeps_a_token_and_returns_the_logon_session(simulator: EmSimulator) -> None:
    client = client_for(simulator)

    logon = client.logon()

    assert client.logged_on
    assert logon.user_name == USER
    assert logon.delete_href == f"{simulator.url}/api/logonSessions/{logon.session_id}"
    assert simulator.open_logon_sessions == 1
    client.logout()


def test_the_context_manager_logs_out_when_done(simulator: EmSimulator) -> None:
    with client_for(simulator) as client:
        assert simulator.open_logon_sessions == 1
        client.get_failover_session(NORTHWIND)

    assert not client.logged_on
    assert simulator.open_logon_sessions == 0
    assert simulator.request_counts["logout"] == 1


def test_a_wrong_password_is_an_authentication_error(simulator: EmSimulator) -> None:
    client = client_for(simulator, password="wrong")

    with pytest.raises(EmAuthenticationError, match="401"):
        client.logon()

    assert not client.logged_on
    assert simulator.open_logon_sessions == 0


def test_a_logon_answered_without_token_header_never_sends_an_empty_token(
    simulator: EmSimulator,
) -> None:
    simulator.inject(
        "logon",
        FaultResponse(201, fixture_body("logon-session.xml"), {"Content-Type": "application/xml"}),
    )
    client = client_for(simulator)

    with pytest.raises(EmAuthenticationError, match="without a X-RestSvcSessionId"):
        client.logon()

    assert not client.logged_on
    with pytest.raises(EmAuthenticationError, match="not logged on"):
        client.get_failover_session(NORTHWIND)
    assert simulator.request_counts["session"] == 0


# --- Reading sessions ------------------------------------------------------------------


def test_one_session_is_fetched_by_its_guid(simulator: EmSimulator) -> None:
    with client_for(simulator) as client:
        session = client.get_failover_session(NORTHWIND)

    assert session.id == NORTHWIND
    assert session.name == "Northwind Failover Plan"
    assert (session.state, session.result) == ("Stopped", "Failed")
    assert session.failure_message == "2 of 3 VMs failed to fail over."
    assert session.backup_server_name == "vbr-sp02.example.test"
    assert {task.vm_name: task.result for task in session.tasks} == {
        "sql-vm-01": "Failed",
        "app-vm-03": "Success",
        "file-vm-04": "Failed",
    }


def test_an_unknown_session_is_not_found(simulator: EmSimulator) -> None:
    with client_for(simulator) as client, pytest.raises(EmNotFoundError) as missing:
        client.get_failover_session(UNKNOWN)

    assert missing.value.status == 404
    assert UNKNOWN in missing.value.message


@pytest.mark.parametrize("suffix", ["", "/", "/api", "/api/"])
def test_the_url_works_with_or_without_api(simulator: EmSimulator, suffix: str) -> None:
    with client_for(simulator, url=f"{simulator.url}{suffix}") as client:
        references = client.list_failover_sessions()

    assert client.base_url == f"{simulator.url}/api"
    assert {ref.id for ref in references.refs} == ALL_GUIDS


def test_discovery_follows_next_and_yields_each_matching_session_once(
    simulator: EmSimulator,
) -> None:
    since = 'CreationTime>="2026-03-01T12:00:00Z"'

    with client_for(simulator) as client:
        pages = list(client.discover_failover_sessions(since, page_size=2))

    ids = [session.id for page in pages for session in page.sessions]
    assert len(pages) == 3
    assert [len(page.sessions) for page in pages] == [2, 2, 2]
    assert sorted(ids) == sorted(ALL_GUIDS - {OLD_CONTOSO})
    assert all(page.rejected == () for page in pages)
    assert pages[-1].paging is not None
    assert pages[-1].paging.next_href is None
    assert simulator.request_counts["query"] == 3


def test_a_refused_query_falls_back_to_the_collection_and_each_session(
    simulator: EmSimulator,
) -> None:
    simulator.inject("query", FaultResponse.em_error(400, "Query service is not available."))

    with client_for(simulator) as client:
        pages = list(client.discover_failover_sessions("State!=Stopped", page_size=2))

    (page,) = pages
    assert {session.id for session in page.sessions} == ALL_GUIDS
    assert {ref.id for ref in page.refs} == ALL_GUIDS
    assert page.paging is None
    assert page.rejected == ()
    assert simulator.request_counts["query"] == 1
    assert simulator.request_counts["refs"] == 1
    assert simulator.request_counts["session"] == len(ALL_GUIDS)


# --- Transport failures ----------------------------------------------------------------


def test_an_untrusted_certificate_is_a_tls_error_naming_the_host(
    simulator: EmSimulator, tmp_path: Path
) -> None:
    stranger = make_test_pki(tmp_path)
    client = client_for(simulator, ca_bundle=stranger.ca_bundle)

    with pytest.raises(EmTlsError) as refused:
        client.logon()

    assert "TLS certificate failure" in str(refused.value)
    assert f"127.0.0.1:{simulator.port}" in str(refused.value)
    assert refused.value.host == f"127.0.0.1:{simulator.port}"
    assert simulator.open_logon_sessions == 0


def test_a_closed_port_is_a_connection_error(pki: TestPki) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = EmClient(
        f"https://127.0.0.1:{port}",
        USER,
        DEMO_PASSWORD,
        ca_bundle=str(pki.ca_bundle),
        retry=quick_retry(total=1),
    )

    with pytest.raises(EmConnectionError) as unreachable:
        client.logon()

    assert unreachable.value.host == f"127.0.0.1:{port}"
    assert f"EM unreachable at 127.0.0.1:{port}" in str(unreachable.value)


def test_an_expired_token_is_renewed_once_and_the_call_succeeds(simulator: EmSimulator) -> None:
    # EM sets a cookie with the token, and a cookie wins over the header: had the client
    # kept the first logon's cookie, the retry would be refused again.
    with client_for(simulator) as client:
        first = client.get_failover_session(NORTHWIND)
        simulator.expire_logon_sessions()

        again = client.get_failover_session(NORTHWIND)

        assert again == first
        assert len(client._http.cookies) == 0
        assert simulator.request_counts["logon"] == 2
        assert simulator.request_counts["session"] == 3
        assert simulator.open_logon_sessions == 1
    assert simulator.open_logon_sessions == 0


def test_a_token_refused_twice_is_an_authentication_error(simulator: EmSimulator) -> None:
    refused = FaultResponse.em_error(401, "Logon session is invalid or has expired.")
    simulator.inject("session", refused, times=2)

    with client_for(simulator) as client, pytest.raises(EmAuthenticationError, match="fresh"):
        client.get_failover_session(NORTHWIND)

    assert simulator.request_counts["logon"] == 2
    assert simulator.request_counts["session"] == 2


def test_two_503s_then_an_answer_succeeds_through_retries(simulator: EmSimulator) -> None:
    simulator.inject("session", FaultResponse.em_error(503, "Service unavailable."), times=2)

    with client_for(simulator) as client:
        session = client.get_failover_session(NORTHWIND)

    assert session.id == NORTHWIND
    assert simulator.request_counts["session"] == 3


def test_a_500_that_persists_is_an_http_error_with_em_message(simulator: EmSimulator) -> None:
    broken = FaultResponse(
        500, fixture_body("error-500.xml"), {"Content-Type": "application/xml; charset=utf-8"}
    )
    simulator.inject("session", broken, times=10)

    with client_for(simulator) as client, pytest.raises(EmHttpError) as failed:
        client.get_failover_session(NORTHWIND)

    assert failed.value.status == 500
    assert failed.value.method == "GET"
    assert failed.value.path == f"/api/cloud/failoverSessions/{NORTHWIND}"
    assert failed.value.message == "Object reference not set to an instance of an object."
    assert simulator.request_counts["session"] == 4  # the first try and three retries


def test_an_html_proxy_page_is_an_http_error_that_says_it_was_not_em(
    simulator: EmSimulator,
) -> None:
    page = FaultResponse(
        502, fixture_body("hostile/iis-error-page.html"), {"Content-Type": "text/html"}
    )
    simulator.inject("session", page, times=10)

    with client_for(simulator) as client, pytest.raises(EmHttpError) as failed:
        client.get_failover_session(NORTHWIND)

    assert failed.value.status == 502
    assert "text/html" in failed.value.message
    assert "an HTML page" in failed.value.message
    assert "not an EM <Error>" in failed.value.message


def test_an_oversized_body_is_refused(simulator: EmSimulator) -> None:
    huge = FaultResponse(200, b"<QueryResult>" + b" " * (1024 * 1024) + b"</QueryResult>", {})
    simulator.inject("session", huge)

    with (
        client_for(simulator, max_body_bytes=64 * 1024) as client,
        pytest.raises(EmResponseError) as refused,
    ):
        client.get_failover_session(NORTHWIND)

    assert refused.value.expected == "a body of at most 65536 bytes"
    assert refused.value.found == "a larger body"
    assert simulator.open_logon_sessions == 0
