"""The EM simulator answers over real TLS like Enterprise Manager's XML REST API."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from defusedxml import ElementTree as SafeET

from failover_local.em_simulator import DEMO_PASSWORD, EmSimulator, FaultResponse
from failover_local.story import Story, demo_story
from failover_local.tls import TestPki, make_test_pki

pytestmark = pytest.mark.integration

NS = "{http://www.veeam.com/ent/v1.0}"
USER = "EM01\\svc-notifier"
STORY_START = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
NOW = STORY_START + timedelta(seconds=10)
ALL_GUIDS = {
    "0b7c2f3e-9d41-4c55-8a0e-6f1d2c3b4a50",
    "4be1d766-bf90-465a-8df1-2b949f7be762",
    "aa6845c2-6440-47b3-85e9-8895f3989886",
    "5d3e8f21-7a6b-4c19-9e2d-1f0a8b7c6d53",
    "c2f9a4b7-3e18-4d6a-b5c0-8e7f6a5d4c32",
    "e8a1d6c4-2b7f-4f3e-a9d8-7c6b5a4f3e29",
    "f3b7d2a1-8c4e-4b6f-9a15-2e7d6c5b4a38",
}
NORTHWIND = "5d3e8f21-7a6b-4c19-9e2d-1f0a8b7c6d53"
WOODGROVE = "e8a1d6c4-2b7f-4f3e-a9d8-7c6b5a4f3e29"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def story() -> Story:
    # Ten steps in, every session but the endless one has finished.
    return demo_story(STORY_START)


@pytest.fixture
def simulator(story: Story, pki: TestPki) -> Iterator[EmSimulator]:
    with EmSimulator(story, pki, clock=lambda: NOW) as running:
        yield running


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def logon(simulator: EmSimulator, http: requests.Session) -> str:
    response = http.post(
        f"{simulator.url}/api/sessionMngr/?v=latest",
        auth=(USER, DEMO_PASSWORD),
        verify=str(simulator.ca_bundle),
        timeout=5,
    )
    assert response.status_code == 201
    return response.headers["X-RestSvcSessionId"]


def get(simulator: EmSimulator, http: requests.Session, url: str, token: str) -> requests.Response:
    if url.startswith("/"):
        url = f"{simulator.url}{url}"
    return http.get(
        url,
        headers={"X-RestSvcSessionId": token, "Accept": "application/xml"},
        verify=str(simulator.ca_bundle),
        timeout=5,
    )


def test_logon_answers_201_with_token_and_logon_session(
    simulator: EmSimulator, http: requests.Session
) -> None:
    response = http.post(
        f"{simulator.url}/api/sessionMngr/?v=latest",
        auth=(USER, DEMO_PASSWORD),
        verify=str(simulator.ca_bundle),
        timeout=5,
    )

    assert response.status_code == 201
    assert response.headers["X-RestSvcSessionId"]
    root = SafeET.fromstring(response.content)
    assert root.tag == f"{NS}LogonSession"
    assert root.findtext(f"{NS}UserName") == USER
    session_id = root.findtext(f"{NS}SessionId")
    delete = root.find(f"{NS}Links/{NS}Link[@Rel='Delete']")
    assert delete is not None
    assert delete.get("Href") == f"{simulator.url}/api/logonSessions/{session_id}"
    assert simulator.open_logon_sessions == 1


def test_logon_with_wrong_password_answers_401_error(
    simulator: EmSimulator, http: requests.Session
) -> None:
    response = http.post(
        f"{simulator.url}/api/sessionMngr/?v=latest",
        auth=(USER, "wrong"),
        verify=str(simulator.ca_bundle),
        timeout=5,
    )

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert response.headers["Content-Type"] == "application/xml; charset=utf-8"
    assert response.content.startswith(b'<?xml version="1.0" encoding="utf-8"?>')
    error = SafeET.fromstring(response.content)
    assert error.tag == f"{NS}Error"
    assert error.get("StatusCode") == "401"
    assert simulator.open_logon_sessions == 0


def test_calls_without_a_valid_token_answer_401(
    simulator: EmSimulator, http: requests.Session
) -> None:
    response = get(simulator, http, "/api/cloud/failoverSessions", "not-a-token")

    assert response.status_code == 401
    assert SafeET.fromstring(response.content).get("StatusCode") == "401"


def test_cookie_wins_over_header(simulator: EmSimulator, http: requests.Session) -> None:
    token = logon(simulator, http)
    http.cookies.clear()

    response = http.get(
        f"{simulator.url}/api/cloud/failoverSessions",
        headers={"X-RestSvcSessionId": token, "Cookie": "X-RestSvcSessionId=stale"},
        verify=str(simulator.ca_bundle),
        timeout=5,
    )

    assert response.status_code == 401


def test_failed_session_entity_carries_session_and_task_fields(
    simulator: EmSimulator, http: requests.Session
) -> None:
    token = logon(simulator, http)

    response = get(simulator, http, f"/api/cloud/failoverSessions/{NORTHWIND}?format=Entity", token)

    assert response.status_code == 200
    root = SafeET.fromstring(response.content)
    assert root.tag == f"{NS}CloudFailoverSession"
    assert root.get("UID") == f"urn:veeam:CloudFailoverSession:{NORTHWIND}"
    assert root.get("Name") == "Northwind Failover Plan"
    up = root.find(f"{NS}Links/{NS}Link[@Rel='Up']")
    assert up is not None
    assert up.get("Name") == "vbr-sp02.example.test"
    assert root.findtext(f"{NS}JobType") == "FailoverPlan"
    assert root.findtext(f"{NS}State") == "Stopped"
    assert root.findtext(f"{NS}Result") == "Failed"
    assert root.findtext(f"{NS}Progress") == "100"
    assert root.findtext(f"{NS}FailureMessage")
    assert root.findtext(f"{NS}EndTimeUTC", "").endswith("Z")
    tasks = root.findall(f"{NS}CloudFailoverTasks/{NS}CloudFailoverTasks")
    results = {task.get("VmName"): task.findtext(f"{NS}Result") for task in tasks}
    assert results == {"sql-vm-01": "Failed", "app-vm-03": "Success", "file-vm-04": "Failed"}
    failed = [task for task in tasks if task.findtext(f"{NS}Result") == "Failed"]
    assert all(task.findtext(f"{NS}FailureMessage") for task in failed)


def test_running_session_has_no_end_time_and_result_none(
    simulator: EmSimulator, http: requests.Session
) -> None:
    token = logon(simulator, http)

    response = get(simulator, http, f"/api/cloud/failoverSessions/{WOODGROVE}?format=Entity", token)

    root = SafeET.fromstring(response.content)
    assert root.findtext(f"{NS}State") == "Working"
    assert root.findtext(f"{NS}Result") == "None"
    assert root.find(f"{NS}EndTimeUTC") is None
    assert root.find(f"{NS}FailureMessage") is None


def test_session_without_format_is_an_entity_ref(
    simulator: EmSimulator, http: requests.Session
) -> None:
    token = logon(simulator, http)

    response = get(simulator, http, f"/api/cloud/failoverSessions/{WOODGROVE}", token)

    root = SafeET.fromstring(response.content)
    assert root.tag == f"{NS}EntityRef"
    assert root.get("Type") == "CloudFailoverSessionReference"


def test_unknown_session_answers_404_error(simulator: EmSimulator, http: requests.Session) -> None:
    token = logon(simulator, http)
    unknown = "00000000-0000-4000-8000-000000000000"

    response = get(simulator, http, f"/api/cloud/failoverSessions/{unknown}", token)

    assert response.status_code == 404
    assert SafeET.fromstring(response.content).get("StatusCode") == "404"


def test_collection_lists_refs_of_the_last_30_days(
    simulator: EmSimulator, http: requests.Session
) -> None:
    token = logon(simulator, http)

    response = get(simulator, http, "/API/Cloud/FailoverSessions", token)

    root = SafeET.fromstring(response.content)
    assert root.tag == f"{NS}EntityReferences"
    uids = {ref.get("UID", "").rsplit(":", 1)[-1] for ref in root.findall(f"{NS}Ref")}
    assert uids == ALL_GUIDS


def test_query_paging_follows_next_until_none(
    simulator: EmSimulator, http: requests.Session
) -> None:
    token = logon(simulator, http)
    url: str | None = "/api/query?type=CloudFailoverSession&format=Entities&pageSize=2"
    seen: list[str] = []
    pages = 0

    while url is not None:
        response = get(simulator, http, url, token)
        assert response.status_code == 200
        root = SafeET.fromstring(response.content)
        sessions = root.findall(f"{NS}Entities/{NS}CloudFailoverSessions/{NS}CloudFailoverSession")
        seen += [s.get("UID", "").rsplit(":", 1)[-1] for s in sessions]
        paging = root.find(f"{NS}PagingInfo")
        assert paging is not None
        assert paging.get("PageSize") == "2"
        next_link = paging.find(f"{NS}Links/{NS}Link[@Rel='Next']")
        url = None if next_link is None else next_link.get("Href")
        pages += 1

    assert pages == 4
    assert len(seen) == len(ALL_GUIDS)
    assert set(seen) == ALL_GUIDS
    assert seen[-1] == "0b7c2f3e-9d41-4c55-8a0e-6f1d2c3b4a50"  # oldest last


def test_filter_selects_running_or_recently_ended_sessions(
    simulator: EmSimulator, http: requests.Session
) -> None:
    token = logon(simulator, http)
    since = (STORY_START + timedelta(seconds=3)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    response = http.get(
        f"{simulator.url}/api/query",
        params={
            "type": "CloudFailoverSession",
            "format": "Refs",
            "filter": f'State!=Stopped,EndTime>="{since}"',
            "pageSize": "100",
        },
        headers={"X-RestSvcSessionId": token},
        verify=str(simulator.ca_bundle),
        timeout=5,
    )

    assert response.status_code == 200
    refs = SafeET.fromstring(response.content).findall(f"{NS}Refs/{NS}Ref")
    names = sorted(ref.get("Name") for ref in refs)
    assert names == [
        "Contoso Failover Plan",
        "Fabrikam DR Plan",
        "Northwind Failover Plan",
        "Northwind Failover Plan",
        "Woodgrove Failover Plan",
    ]


def test_and_binds_tighter_than_or(simulator: EmSimulator, http: requests.Session) -> None:
    token = logon(simulator, http)
    query = (
        "/api/query?type=CloudFailoverSession&format=Refs"
        "&filter=result==warning,(name==%22Contoso%20Failover%20Plan%22;state==working)"
    )

    response = get(simulator, http, query, token)

    refs = SafeET.fromstring(response.content).findall(f"{NS}Refs/{NS}Ref")
    assert [ref.get("Name") for ref in refs] == ["Fabrikam DR Plan"]


def test_malformed_filter_answers_400_naming_the_problem(
    simulator: EmSimulator, http: requests.Session
) -> None:
    token = logon(simulator, http)

    response = get(
        simulator, http, "/api/query?type=CloudFailoverSession&filter=Colour==red", token
    )

    assert response.status_code == 400
    assert "Colour" in SafeET.fromstring(response.content).get("Message", "")


def test_untrusted_ca_fails_verification(
    simulator: EmSimulator, http: requests.Session, tmp_path: Path
) -> None:
    other = make_test_pki(tmp_path)

    with pytest.raises(requests.exceptions.SSLError):
        http.post(
            f"{simulator.url}/api/sessionMngr/?v=latest",
            auth=(USER, DEMO_PASSWORD),
            verify=str(other.ca_bundle),
            timeout=5,
        )


def test_injected_faults_are_served_in_order_then_normal_answers_resume(
    simulator: EmSimulator, http: requests.Session
) -> None:
    token = logon(simulator, http)
    simulator.inject("refs", FaultResponse.em_error(503, "Service unavailable."), times=2)
    simulator.inject(
        "refs", FaultResponse(200, b"<html>proxy</html>", {"Content-Type": "text/html"})
    )

    statuses = [get(simulator, http, "/api/cloud/failoverSessions", token) for _ in range(4)]

    assert [r.status_code for r in statuses] == [503, 503, 200, 200]
    assert statuses[2].headers["Content-Type"] == "text/html"
    assert statuses[3].headers["Content-Type"].startswith("application/xml")
    assert simulator.request_counts["refs"] == 4


def test_dropped_connection_surfaces_as_connection_error(
    simulator: EmSimulator, http: requests.Session
) -> None:
    simulator.inject("logon", FaultResponse(0, drop_connection=True))

    with pytest.raises(requests.exceptions.ConnectionError):
        logon(simulator, http)

    assert logon(simulator, http)


def test_logout_closes_the_logon_session(simulator: EmSimulator, http: requests.Session) -> None:
    response = http.post(
        f"{simulator.url}/api/sessionMngr/?v=latest",
        auth=(USER, DEMO_PASSWORD),
        verify=str(simulator.ca_bundle),
        timeout=5,
    )
    token = response.headers["X-RestSvcSessionId"]
    delete = SafeET.fromstring(response.content).find(f"{NS}Links/{NS}Link[@Rel='Delete']")
    assert delete is not None
    http.cookies.clear()

    answer = http.delete(
        delete.get("Href", ""),
        headers={"X-RestSvcSessionId": token},
        verify=str(simulator.ca_bundle),
        timeout=5,
    )

    assert answer.status_code == 204
    assert simulator.open_logon_sessions == 0
    assert get(simulator, http, "/api/cloud/failoverSessions", token).status_code == 401


def test_demo_story_timeline() -> None:
    story = demo_story(STORY_START)

    early = {s.name: s.state for s in story.snapshot(STORY_START + timedelta(seconds=2.5))}
    late = {s.guid: s for s in story.snapshot(STORY_START + timedelta(seconds=6))}

    assert story.duration == 5.9
    assert early["Tailspin Test Plan"] == "Working"
    assert "Woodgrove Failover Plan" not in early
    assert late[WOODGROVE].state == "Working"
    assert {s.result for s in late.values() if s.state == "Stopped"} == {
        "Success",
        "Warning",
        "Failed",
    }
