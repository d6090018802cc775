"""The preflight check: can this deployment tell anyone about a cloud failover?

It goes through the same doors a poll does: it reads each EM's account from its secret,
logs on, asks EM's query service for one page of cloud failover sessions (a tenant account
is refused: the notifier needs a service-provider role), reads a key that does not exist
from the state table, and asks SNS and EventBridge for the topic and the bus. On request
it then publishes one test notification on both channels, marked as a test everywhere a
person, a filter policy or a rule looks: `[TEST]` in the subject, the `event_type`
attribute `notifier.test`, the detail-type `Cloud Failover Notifier Test` and the alert
`test` in the detail.

Each check's detail is built from the adapters' own error messages, which carry no
password, token or secret value; EM's text in them is cleaned and shortened.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from failover_poller.channels import Channel, EventBridgeChannel, PublishError, SnsChannel
from failover_poller.config import Config, EmTarget
from failover_poller.em_source import Credentials, CredentialsError, ca_bundle_file
from failover_poller.notifications import SCHEMA_VERSION, Notification, clean, shorten, to_gsm
from failover_poller.runtime import AWS_CLIENT_CONFIG, secret_credentials
from failover_poller.service import failure_kind
from failover_poller.state_store import StateStore, StateStoreError
from veeam_em.client import EmClient
from veeam_em.errors import EmAuthenticationError, EmError, EmHttpError

if TYPE_CHECKING:
    from mypy_boto3_events.client import EventBridgeClient
    from mypy_boto3_sns.client import SNSClient

TEST_EVENT_TYPE = "notifier.test"
TEST_DETAIL_TYPE = "Cloud Failover Notifier Test"
TEST_SUBJECT_PREFIX = "[TEST]"
TEST_ALERT = "test"
# No session has this ID (sessions are GUIDs), so reading it changes and finds nothing.
PROBE_SESSION_ID = "preflight-probe"
DETAIL_LIMIT = 300
# Statuses a query answers on an EM whose query service cannot run it: read the plain
# collection instead, as discovery does.
_QUERY_UNSUPPORTED = frozenset({400, 404, 405, 501})
# Statuses with which EM refuses an account that logged on but may not see the sessions.
_NOT_ALLOWED = frozenset({401, 403})


@dataclass(frozen=True, slots=True)
class Check:
    """One thing the preflight looked at: whether it is fine, and what was found."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class PreflightResult:
    """Every check, in the order they ran."""

    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return all(check.ok for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy: the function's answer to a preflight event."""
        return {"preflight": True, "ok": self.ok, "checks": [asdict(c) for c in self.checks]}


@dataclass(frozen=True, slots=True)
class Adapters:
    """What the preflight talks to; tests pass fakes or clients of their own."""

    store: StateStore
    sns: SNSClient
    events: EventBridgeClient
    credentials: Callable[[str], Callable[[bool], Credentials]] = secret_credentials
    client_factory: Callable[..., EmClient] = EmClient

    @classmethod
    def from_config(cls, config: Config) -> Adapters:
        """The AWS clients the poller uses, with the same retry settings."""
        session = boto3.session.Session()
        return cls(
            store=StateStore(
                config.state_table_name,
                session.client("dynamodb", config=AWS_CLIENT_CONFIG),
                ttl=config.state_ttl,
            ),
            sns=session.client("sns", config=AWS_CLIENT_CONFIG),
            events=session.client("events", config=AWS_CLIENT_CONFIG),
        )


def run_preflight(
    config: Config,
    adapters: Adapters | None = None,
    *,
    send_test: bool = False,
    now: datetime | None = None,
) -> PreflightResult:
    """Check every EM, the table, the topic and the bus; with `send_test`, publish one
    test notification on both channels. Never raises for what it finds: a failure is a
    check that is not ok."""
    adapters = adapters or Adapters.from_config(config)
    checks: list[Check] = []
    for target in config.targets:
        checks += check_em(config, target, adapters)
    checks.append(check_table(config, adapters.store))
    checks.append(check_topic(config.topic_arn, adapters.sns))
    checks.append(check_bus(config.event_bus_name, adapters.events))

    if send_test:
        notification = render_test(
            [target.host for target in config.targets], now or datetime.now(UTC)
        )
        channels: tuple[Channel, ...] = (
            SnsChannel(config.topic_arn, adapters.sns),
            EventBridgeChannel(config.event_bus_name, adapters.events),
        )
        checks += [send_test_notification(channel, notification) for channel in channels]
    return PreflightResult(tuple(checks))


# --- EM ----------------------------------------------------------------------------------


def check_em(config: Config, target: EmTarget, adapters: Adapters) -> list[Check]:
    """Read the account, log on and count the cloud failover sessions it can see."""
    try:
        # Read afresh: the preflight tests the secret as it is now, not a cached copy.
        credentials = adapters.credentials(target.secret_arn)(True)
    except CredentialsError as error:
        return [Check("credentials", False, _text(error))]
    checks = [
        Check(
            "credentials",
            True,
            f"user {clean(credentials.username)} for EM {clean(target.host)} from the secret",
        )
    ]

    client = adapters.client_factory(
        target.url,
        credentials.username,
        credentials.password,
        ca_bundle=ca_bundle_file(target.ca_bundle),
        timeouts=config.em_timeouts,
    )
    logged_on = False
    try:
        with client:
            logged_on = True
            visible, source = count_sessions(client)
    except EmError as error:
        if not logged_on:
            return [*checks, Check("logon", False, f"{failure_kind(error)}: {_text(error)}")]
        return [*checks, _logon_ok(target), Check("failover sessions", False, _refusal(error))]

    return [
        *checks,
        _logon_ok(target),
        Check("failover sessions", True, f"{visible} visible to this account ({source})"),
    ]


def count_sessions(client: EmClient) -> tuple[int, str]:
    """How many cloud failover sessions the logged-on account can see, and where that was
    read: one session per page, so the query's page count is the number of sessions."""
    try:
        first = next(iter(client.query_failover_sessions(None, page_size=1)))
    except EmHttpError as error:
        if error.status not in _QUERY_UNSUPPORTED:
            raise
        return len(client.list_failover_sessions().refs), "session collection, last 30 days"

    if not (first.sessions or first.refs or first.rejected):
        return 0, "query service"
    if first.paging is not None:
        return first.paging.pages_count, "query service"
    return len(first.sessions) + len(first.rejected), "query service"


def _logon_ok(target: EmTarget) -> Check:
    return Check("logon", True, f"EM {clean(target.host)}")


def _refusal(error: EmError) -> str:
    status = 401 if isinstance(error, EmAuthenticationError) else getattr(error, "status", None)
    if status in _NOT_ALLOWED:
        return (
            f"EM refuses this account cloud failover sessions ({status}): it needs a "
            "service-provider role in EM, a tenant account cannot see them"
        )
    return _text(error)


# --- AWS ---------------------------------------------------------------------------------


def check_table(config: Config, store: StateStore) -> Check:
    """Read a key that does not exist: proves the table answers to the function's role
    (and its KMS key decrypts) without writing anything."""
    try:
        store.get(config.targets[0].host, PROBE_SESSION_ID)
    except StateStoreError as error:
        return Check("state table", False, _text(error))
    return Check("state table", True, f"{config.state_table_name} answers a read")


def check_topic(topic_arn: str, sns: SNSClient) -> Check:
    """The failover topic exists and answers, with how many subscribers it has."""
    try:
        attributes = sns.get_topic_attributes(TopicArn=topic_arn)["Attributes"]
    except (ClientError, BotoCoreError) as error:
        return Check("topic", False, _aws_text("GetTopicAttributes", error))
    confirmed = attributes.get("SubscriptionsConfirmed", "0")
    pending = attributes.get("SubscriptionsPending", "0")
    return Check(
        "topic",
        True,
        f"{topic_arn}: {confirmed} confirmed subscriptions, {pending} pending confirmation",
    )


def check_bus(bus_name: str, events: EventBridgeClient) -> Check:
    """The event bus exists and answers."""
    try:
        events.describe_event_bus(Name=bus_name)
    except (ClientError, BotoCoreError) as error:
        return Check("event bus", False, _aws_text("DescribeEventBus", error))
    return Check("event bus", True, f"{bus_name} answers")


def send_test_notification(channel: Channel, notification: Notification) -> Check:
    """Publish the test notification on one channel."""
    name = f"test notification ({channel.name})"
    try:
        failed = channel.publish_batch([("test", notification)])
    except PublishError as error:
        return Check(name, False, _text(error))
    if failed:
        return Check(name, False, f"{channel.name} did not take it: {_text(failed['test'])}")
    shown = notification.subject if channel.name == "sns" else notification.detail_type
    return Check(name, True, f"published {shown!r}")


# --- The test notification ---------------------------------------------------------------


def render_test(em_hosts: Sequence[str], now: datetime) -> Notification:
    """One notification that says, on every channel, that it is only a test."""
    moment = now.astimezone(UTC).isoformat().replace("+00:00", "Z")
    hosts = ", ".join(clean(host) for host in em_hosts)
    key = f"preflight/test/{moment}"
    subject = shorten(
        f"{TEST_SUBJECT_PREFIX} Cloud failover notifier test for EM {_ascii(hosts)}", 100
    )
    body = (
        f"{TEST_SUBJECT_PREFIX} This is a test of the cloud failover notifier. "
        "No failover happened and nothing needs doing.\n"
        "\n"
        "The notifier's preflight check sent it on request, to show that this address "
        "receives the notifier's messages.\n"
        "\n"
        f"EM:    {hosts}\n"
        f"Sent:  {moment}\n"
    )
    sms = to_gsm(
        f"{TEST_SUBJECT_PREFIX} Cloud failover notifier test. No failover happened, nothing to do."
    )
    first = em_hosts[0] if em_hosts else "-"
    return Notification(
        dedup_key=key,
        outcome=TEST_ALERT,
        session_id="",
        subject=subject,
        message=body,
        attributes={
            "event_type": TEST_EVENT_TYPE,
            "em_host": clean(first) or "-",
            "dedup_key": key,
            "muted": "false",
        },
        detail_type=TEST_DETAIL_TYPE,
        detail={
            "schemaVersion": SCHEMA_VERSION,
            "alert": TEST_ALERT,
            "dedupKey": key,
            "emHost": first,
            "emHosts": list(em_hosts),
            "muted": False,
            "timeUtc": moment,
        },
        variants={"default": body, "email": body, "sms": sms},
    )


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


def _text(value: object) -> str:
    return clean(str(value), DETAIL_LIMIT)


def _aws_text(operation: str, error: ClientError | BotoCoreError) -> str:
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        code, message = details.get("Code", "Unknown"), details.get("Message", "")
        return _text(f"{operation} failed: {code}: {message}")
    return _text(f"{operation} failed: {type(error).__name__}: {error}")
