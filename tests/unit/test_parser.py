"""Turning EM's XML answers into records: real answers read right, hostile ones are refused.

Every input is a file under tests/fixtures/em: the real-shaped samples at the top level,
answers that must be refused under hostile/, and odd-but-valid answers under edge/.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from veeam_em.errors import EmResponseError
from veeam_em.models import RESULT_NONE, STATE_STOPPED
from veeam_em.parser import (
    NAMESPACE,
    parse_entity_references,
    parse_error,
    parse_failover_session,
    parse_logon_session,
    parse_query_result,
    parse_timestamp,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "em"
SESSION_ROOT = f"<CloudFailoverSession> in namespace {NAMESPACE}"
HOSTILE_GUID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
EDGE_GUID = "f47ac10b-58cc-4372-a567-0e02b2c3d479"
BACKUP_SERVER = (
    "https://em01.example.test:9398/api/backupServers/3bef663c-213b-49be-bef7-cf228eaf4dd8"
)


def em_answer(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def utc(
    year: int, month: int, day: int, hour: int, minute: int, second: int, micro: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


# --- Real-shaped samples ---------------------------------------------------------------


def test_a_finished_session_reads_its_own_fields() -> None:
    body = em_answer("failover-session-stopped-success.xml")

    session = parse_failover_session(body, "failover-session-stopped-success.xml")

    assert session.id == "29ef45ac-5fc2-479a-bb40-7fa9c666600b"
    assert session.uid == "urn:veeam:CloudFailoverSession:29ef45ac-5fc2-479a-bb40-7fa9c666600b"
    assert session.name == session.plan_name == "Contoso Failover Plan"
    assert session.href == (
        "https://em01.example.test:9398/api/cloud/failoverSessions/"
        "29ef45ac-5fc2-479a-bb40-7fa9c666600b?format=Entity"
    )
    assert session.job_type == "FailoverPlan"
    assert session.creation_time == utc(2025, 3, 7, 17, 38, 16)
    assert session.end_time == utc(2025, 3, 7, 17, 39, 36)
    assert (session.state, session.result, session.progress) == ("Stopped", "Success", 100)
    assert session.failure_message is None
    assert session.tasks == ()
    assert session.backup_server_name == "192.0.2.25"
    assert session.backup_server_href == BACKUP_SERVER
    assert [link.rel for link in session.links] == ["Up", "Alternate"]
    assert session.is_terminal


def test_a_running_session_has_no_end_and_reads_each_vm_task() -> None:
    body = em_answer("failover-session-working.xml")

    session = parse_failover_session(body, "failover-session-working.xml")

    assert session.id == "4be1d766-bf90-465a-8df1-2b949f7be762"
    assert session.creation_time == utc(2025, 3, 10, 20, 29, 45, 77000)
    assert session.end_time is None
    assert (session.state, session.result, session.progress) == ("Working", RESULT_NONE, 0)
    assert session.backup_server_name == "vbr-sp01.example.test"
    assert not session.is_terminal
    first, second = session.tasks
    assert first.vm_name == "app-vm-01"
    assert first.replica_point == "app-vm-01@2025-03-10 05:00:46"
    assert first.creation_time == utc(2025, 3, 10, 20, 29, 50, 130000)
    assert (first.state, first.result, first.end_time) == ("Working", "None", None)
    assert second.vm_name == "db-vm-02"
    assert second.state == "Starting"
    assert second.creation_time == utc(2025, 3, 10, 20, 29, 50, 140000)


def test_a_logon_answer_gives_the_session_id_and_its_logout_link() -> None:
    body = em_answer("logon-session.xml")

    logon = parse_logon_session(body, "logon-session.xml")

    assert logon.session_id == "3f1c9a2e-7b54-4d0e-9a61-5c2d8e4f7a10"
    assert logon.user_name == "EM01\\svc-notifier"
    assert logon.href == (
        "https://em01.example.test:9398/api/logonSessions/3f1c9a2e-7b54-4d0e-9a61-5c2d8e4f7a10"
    )
    assert logon.delete_href == logon.href


def test_the_collection_lists_a_reference_per_session() -> None:
    body = em_answer("failover-sessions-collection-refs.xml")

    references = parse_entity_references(body, "failover-sessions-collection-refs.xml")

    assert [(ref.id, ref.name) for ref in references.refs] == [
        ("4be1d766-bf90-465a-8df1-2b949f7be762", "Contoso Failover Plan"),
        ("29ef45ac-5fc2-479a-bb40-7fa9c666600b", "Contoso Failover Plan"),
        ("aa6845c2-6440-47b3-85e9-8895f3989886", "Fabrikam DR Plan"),
    ]
    first = references.refs[0]
    assert first.type == "CloudFailoverSessionReference"
    assert first.uid == "urn:veeam:CloudFailoverSession:4be1d766-bf90-465a-8df1-2b949f7be762"
    assert [link.rel for link in first.links] == ["Up", "Alternate"]


def test_a_one_page_query_result_holds_its_failed_session_and_no_next_page() -> None:
    body = em_answer("query-result-failover-sessions-entities.xml")

    page = parse_query_result(body, "query-result-failover-sessions-entities.xml")

    (session,) = page.sessions
    assert session.id == "aa6845c2-6440-47b3-85e9-8895f3989886"
    assert session.name == "Fabrikam DR Plan"
    assert (session.state, session.result) == ("Stopped", "Failed")
    assert session.creation_time == utc(2025, 1, 13, 16, 21, 35, 740000)
    assert session.end_time == utc(2025, 1, 13, 16, 23, 16, 110000)
    assert page.refs == ()
    assert page.rejected == ()
    assert page.paging is not None
    assert (page.paging.page_num, page.paging.page_size, page.paging.pages_count) == (1, 100, 1)
    assert page.paging.next_href is None
    assert page.paging.first_href == page.paging.last_href
    assert page.paging.first_href is not None
    assert "filter=Result==failed" in page.paging.first_href


def test_an_error_answer_gives_em_message_and_status() -> None:
    body = em_answer("error-500.xml")

    error = parse_error(body, "error-500.xml")

    assert error.message == "Object reference not set to an instance of an object."
    assert error.status_code == 500
    assert error.status is None
    assert error.first_chance_exception_message == error.message


# --- Hostile answers -------------------------------------------------------------------

HOSTILE = [
    # file, what the parser expected, what it found, the session GUID it names
    ("hostile/billion-laughs.xml", SESSION_ROOT, "forbidden XML (DTDForbidden)", None),
    ("hostile/xxe-external-entity.xml", SESSION_ROOT, "forbidden XML (DTDForbidden)", None),
    ("hostile/plain-doctype.xml", SESSION_ROOT, "forbidden XML (DTDForbidden)", None),
    ("hostile/malformed.xml", SESSION_ROOT, "malformed XML (mismatched tag", None),
    ("hostile/truncated.xml", SESSION_ROOT, "malformed XML (no element found", None),
    (
        "hostile/wrong-namespace.xml",
        SESSION_ROOT,
        "<CloudFailoverSession> in namespace http://www.veeam.com/ent/v2.0",
        None,
    ),
    ("hostile/no-namespace.xml", SESSION_ROOT, "<CloudFailoverSession> in no namespace", None),
    (
        "hostile/error-instead-of-session.xml",
        SESSION_ROOT,
        f"<Error> in namespace {NAMESPACE}",
        None,
    ),
    ("failover-session-ref.xml", SESSION_ROOT, f"<EntityRef> in namespace {NAMESPACE}", None),
    ("hostile/iis-error-page.html", SESSION_ROOT, "an HTML page", None),
    ("hostile/json-body.json", SESSION_ROOT, "a JSON body", None),
    ("hostile/empty-body.xml", SESSION_ROOT, "an empty body", None),
    ("hostile/session-missing-uid.xml", "a UID attribute on <CloudFailoverSession>", "none", None),
    (
        "hostile/session-bad-uid.xml",
        "a GUID in the session UID",
        "'urn:veeam:CloudFailoverSession:not-a-guid'",
        None,
    ),
    (
        "hostile/session-uid-of-another-type.xml",
        "a UID starting urn:veeam:CloudFailoverSession:",
        f"'urn:veeam:CloudFailoverPlan:{HOSTILE_GUID}'",
        None,
    ),
    ("hostile/session-missing-state.xml", "a <State> element", "none", HOSTILE_GUID),
    (
        "hostile/session-missing-creation-time.xml",
        "a <CreationTimeUTC> element",
        "none",
        HOSTILE_GUID,
    ),
    (
        "hostile/session-unreadable-creation-time.xml",
        "an ISO 8601 UTC time in CreationTimeUTC",
        "'03/01/2026 12:00:00'",
        HOSTILE_GUID,
    ),
    (
        "hostile/session-placeholder-creation-time.xml",
        "a real time in CreationTimeUTC",
        "placeholder '1753-01-01T00:00:00Z'",
        HOSTILE_GUID,
    ),
    (
        "hostile/session-placeholder-end-time.xml",
        "a real time in EndTimeUTC",
        "placeholder '1900-01-01T00:00:00Z'",
        HOSTILE_GUID,
    ),
    (
        "hostile/session-end-before-start.xml",
        "an EndTimeUTC after CreationTimeUTC",
        "2026-03-01T11:59:59+00:00",
        HOSTILE_GUID,
    ),
    (
        "hostile/session-end-time-out-of-range.xml",
        "a valid time in EndTimeUTC",
        "'9999-12-31T23:59:59-01:00'",
        HOSTILE_GUID,
    ),
    ("hostile/session-negative-progress.xml", "a Progress from 0 to 100", "-5", HOSTILE_GUID),
    ("hostile/session-progress-150.xml", "a Progress from 0 to 100", "150", HOSTILE_GUID),
    ("hostile/session-non-numeric-progress.xml", "an integer in Progress", "'half'", HOSTILE_GUID),
    (
        "hostile/session-task-without-vm-name.xml",
        "a VmName attribute on <CloudFailoverTasks>",
        "none",
        HOSTILE_GUID,
    ),
    (
        "hostile/session-task-ends-before-it-starts.xml",
        "an EndTimeUTC after CreationTimeUTC",
        "2026-03-01T12:00:01+00:00",
        HOSTILE_GUID,
    ),
]


@pytest.mark.parametrize(
    ("name", "expected", "found", "session_id"),
    HOSTILE,
    ids=[Path(case[0]).stem for case in HOSTILE],
)
def test_a_hostile_session_answer_is_refused_naming_what_was_wrong(
    name: str, expected: str, found: str, session_id: str | None
) -> None:
    body = em_answer(name)

    with pytest.raises(EmResponseError) as refused:
        parse_failover_session(body, name)

    error = refused.value
    assert error.source.startswith(name)
    assert error.expected == expected
    assert error.found.startswith(found)
    assert error.session_id == session_id
    assert f"expected {expected}, found {found}" in str(error)
    assert name in str(error)
    if session_id is not None:
        assert f"(session {session_id})" in str(error)


def test_a_task_error_names_the_vm_and_the_session() -> None:
    name = "hostile/session-task-ends-before-it-starts.xml"

    with pytest.raises(EmResponseError) as refused:
        parse_failover_session(em_answer(name), name)

    assert f"{name} (VM sql-vm-01) (session {HOSTILE_GUID})" in str(refused.value)


def test_a_logon_answer_without_session_id_is_refused() -> None:
    name = "hostile/logon-session-without-session-id.xml"

    with pytest.raises(EmResponseError) as refused:
        parse_logon_session(em_answer(name), name)

    assert refused.value.expected == "a <SessionId> element"
    assert refused.value.found == "none"


@pytest.mark.parametrize(
    ("name", "parse", "root"),
    [
        ("hostile/billion-laughs.xml", parse_query_result, "QueryResult"),
        ("hostile/iis-error-page.html", parse_error, "Error"),
        ("hostile/json-body.json", parse_logon_session, "LogonSession"),
        ("failover-session-working.xml", parse_entity_references, "EntityReferences"),
        ("logon-session.xml", parse_query_result, "QueryResult"),
    ],
    ids=["bomb-as-query", "html-as-error", "json-as-logon", "entity-as-refs", "logon-as-query"],
)
def test_every_parser_names_the_root_it_expected(
    name: str, parse: Callable[[bytes, str], object], root: str
) -> None:
    with pytest.raises(EmResponseError) as refused:
        parse(em_answer(name), name)

    assert refused.value.expected == f"<{root}> in namespace {NAMESPACE}"


# --- Edge cases that must parse --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "created", "ended"),
    [
        (
            "edge/session-times-0-fraction-digits.xml",
            utc(2026, 3, 1, 12, 0, 0),
            utc(2026, 3, 1, 12, 1, 40),
        ),
        (
            "edge/session-times-1-fraction-digit.xml",
            utc(2026, 3, 1, 12, 0, 0, 500000),
            utc(2026, 3, 1, 12, 1, 40, 100000),
        ),
        (
            "edge/session-times-3-fraction-digits.xml",
            utc(2026, 3, 1, 12, 0, 0, 77000),
            utc(2026, 3, 1, 12, 1, 40, 110000),
        ),
        (
            "edge/session-times-6-fraction-digits.xml",
            utc(2026, 3, 1, 12, 0, 0, 659559),
            utc(2026, 3, 1, 12, 1, 40, 1),
        ),
        (
            # .NET writes 7 digits; the 7th is truncated, never rounded up into the next second.
            "edge/session-times-7-fraction-digits.xml",
            utc(2026, 3, 1, 12, 0, 0, 123456),
            utc(2026, 3, 1, 12, 1, 40, 999999),
        ),
        (
            # 14:00+02:00 is 12:00Z, so the UTC end is after it although it reads earlier.
            "edge/session-times-plus-0200-offset.xml",
            utc(2026, 3, 1, 12, 0, 0),
            utc(2026, 3, 1, 12, 1, 40),
        ),
    ],
    ids=["0-digits", "1-digit", "3-digits", "6-digits", "7-digits", "plus-0200"],
)
def test_times_are_read_as_utc_to_the_microsecond(
    name: str, created: datetime, ended: datetime
) -> None:
    session = parse_failover_session(em_answer(name), name)

    assert session.creation_time == created
    assert session.end_time == ended
    assert session.creation_time.utcoffset() == session.end_time.utcoffset() == UTC.utcoffset(None)


def test_a_running_session_reads_its_own_end_and_state_not_its_finished_tasks() -> None:
    name = "edge/session-running-with-finished-tasks.xml"

    session = parse_failover_session(em_answer(name), name)

    assert session.end_time is None
    assert (session.state, session.result, session.progress) == ("Working", "None", 0)
    assert session.creation_time == utc(2026, 3, 1, 12, 0, 0)
    assert session.failure_message is None
    assert not session.is_terminal
    assert [(t.vm_name, t.state, t.result) for t in session.tasks] == [
        ("sql-vm-01", STATE_STOPPED, "Failed"),
        ("app-vm-03", STATE_STOPPED, "Success"),
    ]
    assert session.tasks[0].end_time == utc(2026, 3, 1, 12, 1, 0)
    assert session.tasks[0].failure_message is not None
    assert session.tasks[0].failure_message.startswith("Failed to power on the replica")


def test_unknown_state_and_result_pass_through_as_still_running() -> None:
    name = "edge/session-unknown-state-and-result.xml"

    session = parse_failover_session(em_answer(name), name)

    assert (session.state, session.result, session.progress) == (
        "Pausing",
        "PartiallySucceeded",
        40,
    )
    assert not session.is_terminal


def test_unknown_elements_and_attributes_everywhere_are_ignored() -> None:
    name = "edge/session-extra-elements-and-attributes.xml"

    session = parse_failover_session(em_answer(name), name)

    assert session.id == EDGE_GUID
    assert (session.state, session.result, session.progress) == ("Stopped", "Warning", 100)
    assert session.job_type == "FailoverPlan"
    assert session.end_time == utc(2026, 3, 1, 12, 3, 0)
    assert session.failure_message == "Replica started, but no guest OS heartbeat was received."
    assert session.backup_server_name == "192.0.2.25"
    assert [link.rel for link in session.links] == ["Up", "Alternate", "Related"]
    (task,) = session.tasks
    assert task.vm_name == "web-vm-02"
    assert task.replica_point == "web-vm-02@2026-03-01 05:00:46"
    assert task.failure_message == "No guest OS heartbeat within the timeout."
    assert task.end_time == utc(2026, 3, 1, 12, 2, 55)


def test_shuffled_attributes_and_elements_are_matched_by_name() -> None:
    name = "edge/session-shuffled-attributes-and-elements.xml"

    session = parse_failover_session(em_answer(name), name)

    assert session.id == EDGE_GUID  # the upper-case GUID is normalised
    assert session.name == "Fabrikam DR Plan"
    assert session.creation_time == utc(2026, 3, 1, 12, 0, 0)
    assert session.end_time == utc(2026, 3, 1, 12, 2, 30)
    assert (session.state, session.result) == ("Stopped", "Failed")
    assert session.failure_message == "1 of 1 VMs failed to fail over."
    assert session.backup_server_name == "192.0.2.25"
    (task,) = session.tasks
    assert task.failure_message == "Replica VM not found in the cloud host inventory."
    assert task.replica_point == "web-vm-01@2026-03-01 05:00:46"


@pytest.mark.parametrize(
    "name",
    ["edge/session-with-declaration-and-xsi.xml", "edge/session-utf8-bom.xml"],
    ids=["declaration-and-xsi", "utf8-bom"],
)
def test_a_declaration_schema_namespaces_and_a_bom_change_nothing(name: str) -> None:
    session = parse_failover_session(em_answer(name), name)

    assert session.id == EDGE_GUID
    assert session.creation_time == utc(2026, 3, 1, 12, 0, 0, 123000)
    assert session.end_time == utc(2026, 3, 1, 12, 4, 0, 456000)
    assert (session.state, session.result) == ("Stopped", "Success")
    assert session.failure_message is None  # xsi:nil="true"


def test_a_session_with_an_empty_task_list_has_no_tasks() -> None:
    name = "edge/session-empty-tasks.xml"

    session = parse_failover_session(em_answer(name), name)

    assert session.tasks == ()
    assert (session.state, session.result) == ("Starting", "None")
    assert session.href is None
    assert session.backup_server_name is None


def test_optional_elements_may_be_absent_and_text_is_trimmed() -> None:
    name = "edge/session-without-optional-elements.xml"

    session = parse_failover_session(em_answer(name), name)

    assert session.creation_time == utc(2026, 3, 1, 12, 0, 0)
    assert session.state == "Working"
    assert session.job_type is None
    assert session.progress is None
    assert session.tasks == ()
    assert session.links == ()


def test_the_first_of_two_pages_links_to_the_next() -> None:
    name = "edge/query-result-page-1-of-2.xml"

    page = parse_query_result(em_answer(name), name)

    assert [s.name for s in page.sessions] == ["Contoso Failover Plan", "Fabrikam DR Plan"]
    assert page.paging is not None
    assert (page.paging.page_num, page.paging.page_size, page.paging.pages_count) == (1, 2, 2)
    assert page.paging.next_href == page.paging.last_href
    assert page.paging.next_href is not None
    assert page.paging.next_href.endswith("&pageSize=2&page=2")


def test_the_last_page_has_no_next_link() -> None:
    name = "edge/query-result-page-2-of-2.xml"

    page = parse_query_result(em_answer(name), name)

    assert [s.id for s in page.sessions] == ["e8a1d6c4-2b7f-4f3e-a9d8-7c6b5a4f3e29"]
    assert page.paging is not None
    assert page.paging.page_num == 2
    assert page.paging.next_href is None


@pytest.mark.parametrize(
    "name",
    ["edge/query-result-without-entities.xml", "edge/query-result-empty-entities.xml"],
    ids=["no-entities-element", "empty-entities-element"],
)
def test_an_empty_query_result_has_no_sessions_and_no_next_page(name: str) -> None:
    page = parse_query_result(em_answer(name), name)

    assert page.sessions == ()
    assert page.refs == ()
    assert page.rejected == ()
    assert page.paging is not None
    assert page.paging.next_href is None


def test_one_broken_session_is_set_aside_and_the_others_are_kept() -> None:
    name = "edge/query-result-one-broken-of-three.xml"

    page = parse_query_result(em_answer(name), name)

    assert [s.name for s in page.sessions] == ["Contoso Failover Plan", "Woodgrove Failover Plan"]
    (rejected,) = page.rejected
    assert isinstance(rejected, EmResponseError)
    assert rejected.session_id == "5d3e8f21-7a6b-4c19-9e2d-1f0a8b7c6d53"
    assert rejected.expected == "a real time in EndTimeUTC"


def test_an_error_with_an_unreadable_status_code_keeps_its_message() -> None:
    name = "edge/error-with-odd-status-code.xml"

    error = parse_error(em_answer(name), name)

    assert error.message == "The service is temporarily unavailable."
    assert error.status_code is None
    assert error.status == "ServiceUnavailable"


# --- Timestamps one by one -------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("2015-12-07T17:38:16Z", utc(2015, 12, 7, 17, 38, 16)),
        ("2026-06-16T06:33:10.659559Z", utc(2026, 6, 16, 6, 33, 10, 659559)),
        ("2026-01-01T00:30:00.5-05:30", utc(2026, 1, 1, 6, 0, 0, 500000)),
        ("2026-01-01T01:00:00+02:00", utc(2025, 12, 31, 23, 0, 0)),
    ],
)
def test_a_timestamp_is_read_in_utc(written: str, meant: datetime) -> None:
    assert parse_timestamp(written, "test", "EndTimeUTC") == meant


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("2026-02-30T00:00:00Z", "a valid time in EndTimeUTC"),
        ("2026-01-01T00:00:00+24:00", "a valid time in EndTimeUTC"),
        ("2026-01-01 00:00:00Z", "an ISO 8601 UTC time in EndTimeUTC"),
        ("", "an ISO 8601 UTC time in EndTimeUTC"),
        ("1999-12-31T23:59:59Z", "a real time in EndTimeUTC"),
    ],
    ids=["no-such-day", "offset-out-of-range", "space-separator", "empty", "before-2000"],
)
def test_an_unreadable_timestamp_is_refused(written: str, expected: str) -> None:
    with pytest.raises(EmResponseError) as refused:
        parse_timestamp(written, "test", "EndTimeUTC")

    assert refused.value.expected == expected
