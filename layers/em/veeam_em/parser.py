"""Parse EM's XML bodies into the records of `veeam_em.models`.

Bodies are parsed from bytes with defusedxml (no DTDs, no entities). Elements are matched
by namespace and name, and a session's own fields are read from its direct children only,
since its per-VM tasks carry elements of the same names. Anything that is not the EM XML
the caller expected raises `EmResponseError` naming what was expected and what came.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import TypeVar
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from veeam_em.errors import EmResponseError
from veeam_em.models import (
    SESSION_UID_PREFIX,
    CloudFailoverPlan,
    CloudFailoverSession,
    CloudFailoverTask,
    EntityRef,
    EntityReferences,
    Error,
    Link,
    LogonSession,
    PagingInfo,
    QueryResult,
)

NAMESPACE = "http://www.veeam.com/ent/v1.0"
# EM writes an unset time as a year such as 1900 or 1753; no failover ran before this.
EARLIEST_REAL_YEAR = 2000
_TIMESTAMP = re.compile(
    r"(?P<base>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})"
    r"(?:\.(?P<fraction>\d{1,7}))?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?"
)
_T = TypeVar("_T")


def _tag(name: str) -> str:
    return f"{{{NAMESPACE}}}{name}"


def _describe_tag(tag: str) -> str:
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return f"<{local}> in namespace {namespace}"
    return f"<{tag}> in no namespace"


def _describe_non_xml(body: bytes) -> str | None:
    head = body.lstrip()[:200].lower()
    if not head:
        return "an empty body"
    if head[:1] in (b"{", b"["):
        return "a JSON body"
    if head.startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    return None


def parse_document(body: bytes, source: str, expected_root: str) -> Element:
    """Parse `body` and return its root, which must be EM's `expected_root` element."""
    expected = f"<{expected_root}> in namespace {NAMESPACE}"
    non_xml = _describe_non_xml(body)
    if non_xml is not None:
        raise EmResponseError(source, expected, non_xml)

    try:
        root: Element = fromstring(body, forbid_dtd=True, forbid_entities=True)
    except DefusedXmlException as error:
        raise EmResponseError(
            source, expected, f"forbidden XML ({type(error).__name__})"
        ) from error
    except ParseError as error:
        raise EmResponseError(source, expected, f"malformed XML ({error})") from error

    if root.tag != _tag(expected_root):
        raise EmResponseError(source, expected, _describe_tag(root.tag))
    return root


def _child(element: Element, name: str) -> Element | None:
    return element.find(_tag(name))


def _text(element: Element, name: str) -> str | None:
    child = _child(element, name)
    if child is None or child.text is None:
        return None
    return child.text.strip() or None


def _required_text(element: Element, name: str, source: str) -> str:
    value = _text(element, name)
    if value is None:
        raise EmResponseError(source, f"a <{name}> element", "none")
    return value


def _required_attribute(element: Element, name: str, source: str) -> str:
    value = element.get(name)
    if not value:
        local = element.tag.rpartition("}")[2]
        raise EmResponseError(source, f"a {name} attribute on <{local}>", "none")
    return value


def parse_timestamp(value: str, source: str, field: str) -> datetime:
    """Parse an `xs:dateTime` as EM writes it (0 to 7 fractional digits) into aware UTC."""
    match = _TIMESTAMP.fullmatch(value)
    if match is None:
        raise EmResponseError(source, f"an ISO 8601 UTC time in {field}", repr(value[:40]))

    fraction = (match["fraction"] or "").ljust(6, "0")[:6]
    zone = match["zone"] or "Z"
    try:
        naive = datetime.fromisoformat(f"{match['base']}.{fraction}")
        offset = timedelta() if zone == "Z" else _offset(zone)
        if naive.year < EARLIEST_REAL_YEAR:
            raise EmResponseError(source, f"a real time in {field}", f"placeholder {value!r}")
        return naive.replace(tzinfo=timezone(offset)).astimezone(UTC)
    except (ValueError, OverflowError) as error:
        raise EmResponseError(source, f"a valid time in {field}", repr(value)) from error


def _offset(zone: str) -> timedelta:
    sign = -1 if zone[0] == "-" else 1
    hours, minutes = int(zone[1:3]), int(zone[4:6])
    if hours > 23 or minutes > 59:
        raise ValueError(zone)
    return sign * timedelta(hours=hours, minutes=minutes)


def _optional_time(element: Element, name: str, source: str) -> datetime | None:
    value = _text(element, name)
    return None if value is None else parse_timestamp(value, source, name)


def _progress(element: Element, source: str) -> int | None:
    value = _text(element, "Progress")
    if value is None:
        return None
    try:
        progress = int(value)
    except ValueError as error:
        raise EmResponseError(source, "an integer in Progress", repr(value[:40])) from error
    if not 0 <= progress <= 100:
        raise EmResponseError(source, "a Progress from 0 to 100", str(progress))
    return progress


def _links(element: Element) -> tuple[Link, ...]:
    container = _child(element, "Links")
    if container is None:
        return ()
    return tuple(
        Link(
            rel=link.get("Rel", ""),
            href=link.get("Href", ""),
            type=link.get("Type"),
            name=link.get("Name"),
        )
        for link in container.findall(_tag("Link"))
    )


def _link_href(links: tuple[Link, ...], rel: str) -> str | None:
    return next((link.href for link in links if link.rel == rel and link.href), None)


def session_id_from_uid(uid: str, source: str) -> str:
    """Return the bare, lower-case GUID of `urn:veeam:CloudFailoverSession:{GUID}`."""
    if not uid.startswith(SESSION_UID_PREFIX):
        raise EmResponseError(source, f"a UID starting {SESSION_UID_PREFIX}", repr(uid[:80]))
    try:
        return str(uuid.UUID(uid.removeprefix(SESSION_UID_PREFIX)))
    except ValueError as error:
        raise EmResponseError(source, "a GUID in the session UID", repr(uid[:80])) from error


def _task(element: Element, source: str) -> CloudFailoverTask:
    vm_name = _required_attribute(element, "VmName", source)
    where = f"{source} (VM {vm_name})"
    creation_time = _optional_time(element, "CreationTimeUTC", where)
    end_time = _optional_time(element, "EndTimeUTC", where)
    if creation_time and end_time and end_time < creation_time:
        raise EmResponseError(where, "an EndTimeUTC after CreationTimeUTC", end_time.isoformat())

    replica = _child(element, "VmReplicaPointLink")
    return CloudFailoverTask(
        vm_name=vm_name,
        state=_required_text(element, "State", where),
        result=_text(element, "Result") or "None",
        progress=_progress(element, where),
        creation_time=creation_time,
        end_time=end_time,
        failure_message=_text(element, "FailureMessage"),
        replica_point=None if replica is None else replica.get("Name"),
    )


def session_from_element(element: Element, source: str) -> CloudFailoverSession:
    """Build a session from a `<CloudFailoverSession>` element found in any response.

    Once the session's GUID is known, every error raised for it carries `session_id`.
    """
    uid = _required_attribute(element, "UID", source)
    session_id = session_id_from_uid(uid, source)
    try:
        return _session(element, source, uid, session_id)
    except EmResponseError as error:
        raise EmResponseError(
            error.source, error.expected, error.found, session_id=session_id
        ) from error


def _session(element: Element, where: str, uid: str, session_id: str) -> CloudFailoverSession:

    creation_time = parse_timestamp(
        _required_text(element, "CreationTimeUTC", where), where, "CreationTimeUTC"
    )
    end_time = _optional_time(element, "EndTimeUTC", where)
    if end_time is not None and end_time < creation_time:
        raise EmResponseError(where, "an EndTimeUTC after CreationTimeUTC", end_time.isoformat())

    task_list = _child(element, "CloudFailoverTasks")
    tasks = () if task_list is None else task_list.findall(_tag("CloudFailoverTasks"))
    links = _links(element)
    up = next((link for link in links if link.rel == "Up"), None)
    return CloudFailoverSession(
        id=session_id,
        uid=uid,
        name=_required_attribute(element, "Name", where),
        href=element.get("Href"),
        job_type=_text(element, "JobType"),
        creation_time=creation_time,
        end_time=end_time,
        state=_required_text(element, "State", where),
        result=_required_text(element, "Result", where),
        progress=_progress(element, where),
        failure_message=_text(element, "FailureMessage"),
        tasks=tuple(_task(task, where) for task in tasks),
        backup_server_name=None if up is None else up.name,
        backup_server_href=None if up is None else up.href,
        links=links,
    )


def parse_failover_session(body: bytes, source: str) -> CloudFailoverSession:
    """Parse `GET /cloud/failoverSessions/{ID}?format=Entity`."""
    return session_from_element(parse_document(body, source, "CloudFailoverSession"), source)


def parse_logon_session(body: bytes, source: str) -> LogonSession:
    """Parse the `LogonSession` body of `POST /sessionMngr/`."""
    root = parse_document(body, source, "LogonSession")
    return LogonSession(
        session_id=_required_text(root, "SessionId", source),
        user_name=_text(root, "UserName"),
        href=root.get("Href"),
        delete_href=_link_href(_links(root), "Delete"),
    )


def _ref(element: Element, source: str) -> EntityRef:
    return EntityRef(
        uid=_required_attribute(element, "UID", source),
        name=element.get("Name"),
        href=element.get("Href"),
        type=element.get("Type"),
        links=_links(element),
    )


def parse_entity_references(body: bytes, source: str) -> EntityReferences:
    """Parse a collection of references such as `GET /cloud/failoverSessions`."""
    root = parse_document(body, source, "EntityReferences")
    return EntityReferences(refs=tuple(_ref(ref, source) for ref in root.findall(_tag("Ref"))))


def _int_attribute(element: Element, name: str, source: str, default: int) -> int:
    value = element.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as error:
        raise EmResponseError(source, f"an integer {name} in <PagingInfo>", repr(value)) from error


def _paging(root: Element, source: str) -> PagingInfo | None:
    element = _child(root, "PagingInfo")
    if element is None:
        return None

    links = _links(element)
    return PagingInfo(
        page_num=_int_attribute(element, "PageNum", source, 1),
        page_size=_int_attribute(element, "PageSize", source, 0),
        pages_count=_int_attribute(element, "PagesCount", source, 1),
        first_href=_link_href(links, "First"),
        next_href=_link_href(links, "Next"),
        last_href=_link_href(links, "Last"),
    )


def _each(
    elements: list[Element], build: Callable[[Element], _T]
) -> tuple[tuple[_T, ...], tuple[Exception, ...]]:
    built: list[_T] = []
    rejected: list[Exception] = []
    for element in elements:
        try:
            built.append(build(element))
        except EmResponseError as error:
            rejected.append(error)
    return tuple(built), tuple(rejected)


def parse_query_result(body: bytes, source: str) -> QueryResult:
    """Parse a page of `GET /query`; entities that do not parse are set aside in `rejected`."""
    root = parse_document(body, source, "QueryResult")
    entities = _child(root, "Entities")
    wrapper = None if entities is None else _child(entities, "CloudFailoverSessions")
    session_elements = [] if wrapper is None else wrapper.findall(_tag("CloudFailoverSession"))
    refs_element = _child(root, "Refs")
    ref_elements = [] if refs_element is None else refs_element.findall(_tag("Ref"))

    plan_wrapper = None if entities is None else _child(entities, "CloudFailoverPlans")
    plan_elements = [] if plan_wrapper is None else plan_wrapper.findall(_tag("CloudFailoverPlan"))

    sessions, bad_sessions = _each(session_elements, lambda e: session_from_element(e, source))
    plans, bad_plans = _each(plan_elements, lambda e: plan_from_element(e, source))
    refs, bad_refs = _each(ref_elements, lambda e: _ref(e, source))
    return QueryResult(
        sessions=sessions,
        refs=refs,
        paging=_paging(root, source),
        rejected=bad_sessions + bad_plans + bad_refs,
        plans=plans,
    )


def plan_from_element(element: Element, source: str) -> CloudFailoverPlan:
    """Build a plan from a `<CloudFailoverPlan>` element; the tenant may be missing."""
    return CloudFailoverPlan(
        uid=_required_attribute(element, "UID", source),
        name=_required_attribute(element, "Name", source),
        tenant_uid=_text(element, "TenantUid"),
        tenant_name=_text(element, "TenantName"),
        href=element.get("Href"),
    )


def parse_failover_plans(body: bytes, source: str) -> QueryResult:
    """Parse a page of `GET /query?type=CloudFailoverPlan&format=Entities`."""
    return parse_query_result(body, source)


def parse_error(body: bytes, source: str) -> Error:
    """Parse EM's `Error` body."""
    root = parse_document(body, source, "Error")
    status_code = root.get("StatusCode")
    return Error(
        message=root.get("Message", ""),
        status_code=int(status_code) if status_code and status_code.isdecimal() else None,
        status=root.get("Status"),
        first_chance_exception_message=_text(root, "FirstChanceExceptionMessage"),
    )
