"""DynamoDB adapter: each session's last state, the claim on its transition, and the outbox.

One item per session, keyed by EM host and session GUID. Every write is conditional on the
version read before it, so of several overlapping invocations exactly one claims a
transition. A claimed notification waits on its item (`Pending` lists the channels that
have not acknowledged it, `PendingEmHost` puts it in the sparse `pending` index) until
every channel has taken it. One more item per EM, under `WATCHER_ID`, records when the
poller started watching that EM and when it last polled it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from failover_poller.notifications import Notification

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

WATCHER_ID = "#watcher"
# Outbox items of the poller's own health notifications, beside the sessions of their EM.
HEALTH_PREFIX = "#health/"
# How each failover plan last ended, to tell a recovery.
PLAN_PREFIX = "#plan/"
PLAN_KEY_LIMIT = 512
PENDING_INDEX = "pending"
_CONDITION_FAILED = "ConditionalCheckFailedException"
BATCH_GET_LIMIT = 100
BATCH_GET_CONCURRENCY = 8
UNPROCESSED_ATTEMPTS = 6


class StateStoreError(Exception):
    """DynamoDB could not be read or written; `code` is AWS's error code."""

    def __init__(self, operation: str, code: str, message: str) -> None:
        super().__init__(f"DynamoDB {operation} failed: {code}: {message}")
        self.operation = operation
        self.code = code


@dataclass(frozen=True, slots=True)
class StoredSession:
    """What the last poll wrote about a session."""

    session_id: str
    version: int
    fingerprint: str
    terminal: bool
    notified: bool
    progress: int | None = None
    progress_since: datetime | None = None
    stuck_alerted: bool = False
    started_alerted: bool = False


@dataclass(frozen=True, slots=True)
class Watcher:
    """The poller's record of one EM: since when it watches it, and how its polls go.

    `consecutive_failures` counts polls in a row that could not read EM, `auth_failures`
    those among them refused by EM's logon; `next_attempt_at` is set while the poller backs
    off after repeated authentication failures; `unhealthy` is True once an "unhealthy"
    notification went out and no "recovered" one since. `outbox_since` is set before any
    notification is claimed and cleared once the outbox is found empty, so that a poll
    looks in the outbox only when something may wait there.
    """

    watching_since: datetime
    last_poll_at: datetime | None
    consecutive_failures: int = 0
    auth_failures: int = 0
    next_attempt_at: datetime | None = None
    failing_since: datetime | None = None
    unhealthy: bool = False
    outbox_since: datetime | None = None


@dataclass(frozen=True, slots=True)
class PendingNotification:
    """A claimed notification that some channels have not acknowledged yet."""

    session_id: str
    notification: Notification
    channels: frozenset[str]


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


class StateStore:
    """The state table, through a boto3 DynamoDB client."""

    def __init__(self, table_name: str, client: DynamoDBClient, ttl: timedelta) -> None:
        self._table = table_name
        self._client = client
        self._ttl = ttl

    def watcher(self, em_host: str, now: datetime, lookback: timedelta) -> Watcher:
        """Return the EM's watcher record, creating it on the very first poll of that EM.

        `watching_since` is set `lookback` before the first poll, so that a failover that
        ends between a deployment and its first scheduled poll is still notified.
        """
        key = self._key(em_host, WATCHER_ID)
        item = self._get_item(key)
        if item is not None:
            return _watcher(item)

        since = now - lookback
        try:
            self._client.put_item(
                TableName=self._table,
                Item={**key, "WatchingSince": {"S": _iso(since)}},
                ConditionExpression="attribute_not_exists(SessionId)",
            )
            return Watcher(watching_since=since, last_poll_at=None)
        except ClientError as error:
            if _code(error) != _CONDITION_FAILED:
                raise _translate("PutItem", error) from error
        except BotoCoreError as error:
            raise _translate("PutItem", error) from error

        item = self._get_item(key)
        if item is None:
            raise StateStoreError("GetItem", "MissingItem", "watcher record vanished")
        return _watcher(item)

    def record_poll(self, em_host: str, started_at: datetime) -> None:
        """Remember when the last successful poll of this EM started; clear its failures."""
        self._call(
            "UpdateItem",
            self._client.update_item,
            TableName=self._table,
            Key=self._key(em_host, WATCHER_ID),
            UpdateExpression=(
                "SET LastPollAt = :at, ConsecutiveFailures = :zero, AuthFailures = :zero "
                "REMOVE NextAttemptAt, FailingSince, LastFailure"
            ),
            ConditionExpression="attribute_not_exists(LastPollAt) OR LastPollAt < :at",
            ExpressionAttributeValues={":at": {"S": _iso(started_at)}, ":zero": {"N": "0"}},
            ignore_condition=True,
        )

    def record_failure(
        self, em_host: str, failure: str, *, authentication: bool | None, now: datetime
    ) -> Watcher:
        """Count a poll that could not read EM; return the watcher as it now stands.

        `authentication` is True when EM refused the logon (counted apart, for the
        back-off), False for any other failure (which ends a run of refusals), and None
        for a poll that did not try EM at all (backing off), which leaves the count as is.
        """
        adds = "ConsecutiveFailures :one" + (", AuthFailures :one" if authentication else "")
        sets = "FailingSince = if_not_exists(FailingSince, :now), LastFailure = :failure"
        values: dict[str, Any] = {
            ":one": {"N": "1"},
            ":now": {"S": _iso(now)},
            ":failure": {"S": failure},
        }
        if authentication is False:
            sets += ", AuthFailures = :zero"
            values[":zero"] = {"N": "0"}
        try:
            response = self._client.update_item(
                TableName=self._table,
                Key=self._key(em_host, WATCHER_ID),
                UpdateExpression=f"ADD {adds} SET {sets}",
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        except (ClientError, BotoCoreError) as error:
            raise _translate("UpdateItem", error) from error
        return _watcher(response["Attributes"])

    def mark_outbox(self, em_host: str, now: datetime) -> datetime:
        """Note that notifications may wait in the outbox (before claiming any); returns
        the mark as stored, which an earlier claim may have set.
        """
        try:
            response = self._client.update_item(
                TableName=self._table,
                Key=self._key(em_host, WATCHER_ID),
                UpdateExpression="SET OutboxSince = if_not_exists(OutboxSince, :now)",
                ExpressionAttributeValues={":now": {"S": _iso(now)}},
                ReturnValues="ALL_NEW",
            )
        except (ClientError, BotoCoreError) as error:
            raise _translate("UpdateItem", error) from error
        return datetime.fromisoformat(response["Attributes"]["OutboxSince"]["S"])

    def clear_outbox_mark(self, em_host: str, seen: datetime) -> None:
        """Remove the outbox mark found empty, unless a claim has set it anew since."""
        self._call(
            "UpdateItem",
            self._client.update_item,
            TableName=self._table,
            Key=self._key(em_host, WATCHER_ID),
            UpdateExpression="REMOVE OutboxSince",
            ConditionExpression="OutboxSince = :seen",
            ExpressionAttributeValues={":seen": {"S": _iso(seen)}},
            ignore_condition=True,
        )

    def back_off(self, em_host: str, until: datetime | None) -> None:
        """Set (or clear, with None) the moment before which EM's logon is not tried."""
        if until is None:
            update: dict[str, Any] = {"UpdateExpression": "REMOVE NextAttemptAt"}
        else:
            update = {
                "UpdateExpression": "SET NextAttemptAt = :until",
                "ExpressionAttributeValues": {":until": {"S": _iso(until)}},
            }
        self._call(
            "UpdateItem",
            self._client.update_item,
            TableName=self._table,
            Key=self._key(em_host, WATCHER_ID),
            **update,
        )

    def claim_health_change(
        self,
        em_host: str,
        *,
        unhealthy: bool,
        notification: Notification,
        channels: Iterable[str],
        now: datetime,
        lease: timedelta,
    ) -> bool:
        """Flip the watcher's health and put the notification in the outbox, atomically.

        Returns False when the watcher already has that health (another invocation claimed
        the change first).
        """
        if unhealthy:
            condition = "attribute_not_exists(Unhealthy) OR Unhealthy = :false"
        else:
            condition = "Unhealthy = :true"
        outbox_id = f"{HEALTH_PREFIX}{notification.dedup_key}"
        try:
            self._client.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": self._table,
                            "Key": self._key(em_host, WATCHER_ID),
                            "UpdateExpression": (
                                "SET Unhealthy = :new, "
                                "OutboxSince = if_not_exists(OutboxSince, :now)"
                            ),
                            "ConditionExpression": condition,
                            "ExpressionAttributeValues": {
                                ":new": {"BOOL": unhealthy},
                                ":true": {"BOOL": True},
                                ":now": {"S": _iso(now)},
                                **({":false": {"BOOL": False}} if unhealthy else {}),
                            },
                        }
                    },
                    {
                        "Put": {
                            "TableName": self._table,
                            "Item": {
                                **self._key(em_host, outbox_id),
                                **self._outbox_attributes(
                                    em_host, notification, channels, now, lease
                                ),
                                "Version": {"N": "1"},
                                "ExpiresAt": {"N": str(_epoch(now + self._ttl))},
                            },
                        }
                    },
                ]
            )
        except ClientError as error:
            if _code(error) == "TransactionCanceledException":
                return False
            raise _translate("TransactWriteItems", error) from error
        except BotoCoreError as error:
            raise _translate("TransactWriteItems", error) from error
        return True

    def claim_alert(
        self,
        em_host: str,
        outbox_id: str,
        *,
        notification: Notification,
        channels: Iterable[str],
        now: datetime,
        lease: timedelta,
    ) -> bool:
        """Claim an alert that happens once (a session's stuck or started alert, a
        monitoring gap) by creating its outbox item; False if it exists already."""
        return self._call(
            "PutItem",
            self._client.put_item,
            TableName=self._table,
            Item={
                **self._key(em_host, outbox_id),
                **self._outbox_attributes(em_host, notification, channels, now, lease),
                "Version": {"N": "1"},
                "ExpiresAt": {"N": str(_epoch(now + self._ttl))},
            },
            ConditionExpression="attribute_not_exists(SessionId)",
            ignore_condition=True,
        )

    def plan_outcomes(self, em_host: str, plan_names: Iterable[str]) -> dict[str, PlanOutcome]:
        """The last notified outcome of each named plan that has one, by lower-case name."""
        names = list(dict.fromkeys(_plan_key(name) for name in plan_names))
        found: dict[str, PlanOutcome] = {}
        for start in range(0, len(names), BATCH_GET_LIMIT):
            keys = [self._key(em_host, name) for name in names[start : start + BATCH_GET_LIMIT]]
            for item in self._batch_get(keys):
                if "LastResult" not in item or "LastSessionId" not in item:
                    continue
                failed = item.get("LastFailedSessionId", {}).get("S")
                found[item["SessionId"]["S"]] = PlanOutcome(
                    result=item["LastResult"]["S"],
                    session_id=item["LastSessionId"]["S"],
                    failed_session_id=failed,
                )
        return {key.removeprefix(PLAN_PREFIX): outcome for key, outcome in found.items()}

    def record_plan_outcome(
        self,
        em_host: str,
        plan_name: str,
        *,
        session_id: str,
        result: str,
        started: datetime,
        now: datetime,
    ) -> None:
        """Remember how a plan's latest session (by start) ended; an older one changes
        nothing. Times are stored as epoch microseconds, which compare as numbers."""
        update = "SET LastResult = :result, LastSessionId = :session, LastStart = :started, "
        update += "ExpiresAt = :expires"
        values: dict[str, Any] = {
            ":result": {"S": result},
            ":session": {"S": session_id},
            ":started": {"N": str(int(started.timestamp() * 1_000_000))},
            ":expires": {"N": str(_epoch(now + self._ttl))},
        }
        if result == "Failed":
            update += ", LastFailedSessionId = :session"
        self._call(
            "UpdateItem",
            self._client.update_item,
            TableName=self._table,
            Key=self._key(em_host, _plan_key(plan_name)),
            UpdateExpression=update,
            ConditionExpression="attribute_not_exists(LastStart) OR LastStart < :started",
            ExpressionAttributeValues=values,
            ignore_condition=True,
        )

    def mark_gone(self, em_host: str, session_id: str, now: datetime) -> bool:
        """Mark a watched session that EM no longer has; True only the first time."""
        return self._call(
            "UpdateItem",
            self._client.update_item,
            TableName=self._table,
            Key=self._key(em_host, session_id),
            UpdateExpression=(
                "SET Gone = :true, GoneAt = :now, Version = if_not_exists(Version, :zero), "
                "ExpiresAt = :expires"
            ),
            ConditionExpression="attribute_not_exists(Gone)",
            ExpressionAttributeValues={
                ":true": {"BOOL": True},
                ":now": {"S": _iso(now)},
                ":zero": {"N": "0"},
                ":expires": {"N": str(_epoch(now + self._ttl))},
            },
            ignore_condition=True,
        )

    def get(self, em_host: str, session_id: str) -> StoredSession | None:
        """The stored state of one session, read consistently, or None if never seen."""
        item = self._get_item(self._key(em_host, session_id))
        return None if item is None else _stored(item)

    def get_many(self, em_host: str, session_ids: Sequence[str]) -> dict[str, StoredSession]:
        """The stored states of many sessions, 100 keys a `BatchGetItem`, read consistently;
        sessions never seen are absent from the result.
        """
        unique = list(dict.fromkeys(session_ids))
        chunks = [
            [self._key(em_host, sid) for sid in unique[start : start + BATCH_GET_LIMIT]]
            for start in range(0, len(unique), BATCH_GET_LIMIT)
        ]
        if len(chunks) > 1:
            with ThreadPoolExecutor(max_workers=min(len(chunks), BATCH_GET_CONCURRENCY)) as pool:
                batches = list(pool.map(self._batch_get, chunks))
        else:
            batches = [self._batch_get(chunk) for chunk in chunks]
        found: dict[str, StoredSession] = {}
        for item in (item for batch in batches for item in batch):
            if not _expired(item):
                stored = _stored(item)
                found[stored.session_id] = stored
        return found

    def _batch_get(self, keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
        request: dict[str, Any] = {self._table: {"Keys": keys, "ConsistentRead": True}}
        items: list[dict[str, Any]] = []
        for attempt in range(UNPROCESSED_ATTEMPTS):
            try:
                response = self._client.batch_get_item(RequestItems=request)
            except (ClientError, BotoCoreError) as error:
                raise _translate("BatchGetItem", error) from error
            items += response.get("Responses", {}).get(self._table, [])
            request = dict(response.get("UnprocessedKeys") or {})
            if not request:
                return items
            # DynamoDB hands back keys it had no capacity for: wait a little, ask again.
            time.sleep(min(0.05 * 2**attempt, 1.0) * (0.5 + random.random() / 2))
        raise StateStoreError("BatchGetItem", "UnprocessedKeys", "keys still unprocessed")

    def save(
        self,
        em_host: str,
        session_id: str,
        attributes: dict[str, Any],
        previous: StoredSession | None,
        *,
        now: datetime,
        notification: Notification | None = None,
        channels: Iterable[str] = (),
        lease: timedelta = timedelta(0),
    ) -> bool:
        """Write a session's new state if nobody wrote it since `previous` was read.

        With a `notification`, the write also claims the transition and puts it in the
        outbox, leased to the caller for `lease`. Returns False when another invocation
        wrote first; that invocation then owns whatever the change means.
        """
        item: dict[str, Any] = {
            **self._key(em_host, session_id),
            **attributes,
            "Version": {"N": str(previous.version + 1 if previous else 1)},
            "UpdatedAt": {"S": _iso(now)},
            "ExpiresAt": {"N": str(_epoch(now + self._ttl))},
        }
        if notification is not None:
            item |= self._outbox_attributes(em_host, notification, channels, now, lease)

        if previous is None:
            condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(SessionId)"}
        else:
            condition = {
                "ConditionExpression": "Version = :version",
                "ExpressionAttributeValues": {":version": {"N": str(previous.version)}},
            }
        return self._call(
            "PutItem",
            self._client.put_item,
            TableName=self._table,
            Item=item,
            **condition,
            ignore_condition=True,
        )

    def acknowledge(
        self, em_host: str, session_id: str, channels: frozenset[str], remaining: frozenset[str]
    ) -> None:
        """Record that `channels` took the notification; with none `remaining`, empty the
        outbox item. The caller keeps its lease on what remains.
        """
        if remaining:
            update: dict[str, Any] = {
                "UpdateExpression": "DELETE Pending :channels",
                "ExpressionAttributeValues": {":channels": {"SS": sorted(channels)}},
            }
        else:
            update = {"UpdateExpression": "REMOVE Pending, PendingEmHost, LeaseUntil, Notification"}
        self._call(
            "UpdateItem",
            self._client.update_item,
            TableName=self._table,
            Key=self._key(em_host, session_id),
            **update,
        )

    def pending(self, em_host: str, limit: int) -> list[PendingNotification]:
        """Up to `limit` notifications of this EM still waiting for a channel."""
        response = self._call_query(
            TableName=self._table,
            IndexName=PENDING_INDEX,
            KeyConditionExpression="PendingEmHost = :host",
            ExpressionAttributeValues={":host": {"S": em_host}},
            Limit=limit,
        )
        return [
            PendingNotification(
                session_id=item["SessionId"]["S"],
                notification=Notification.from_json(item["Notification"]["S"]),
                channels=frozenset(item["Pending"]["SS"]),
            )
            for item in response
            if "Notification" in item and "Pending" in item
        ]

    def take_lease(self, em_host: str, session_id: str, now: datetime, lease: timedelta) -> bool:
        """Lease a pending notification for retry; False if another invocation holds it."""
        return self._call(
            "UpdateItem",
            self._client.update_item,
            TableName=self._table,
            Key=self._key(em_host, session_id),
            UpdateExpression="SET LeaseUntil = :until",
            ConditionExpression="attribute_exists(Pending) AND LeaseUntil <= :now",
            ExpressionAttributeValues={
                ":until": {"N": str(_epoch(now + lease))},
                ":now": {"N": str(_epoch(now))},
            },
            ignore_condition=True,
        )

    def release_lease(self, em_host: str, session_id: str) -> None:
        """Give a pending notification back so that the next poll retries it at once."""
        self._call(
            "UpdateItem",
            self._client.update_item,
            TableName=self._table,
            Key=self._key(em_host, session_id),
            UpdateExpression="SET LeaseUntil = :zero",
            ConditionExpression="attribute_exists(Pending)",
            ExpressionAttributeValues={":zero": {"N": "0"}},
            ignore_condition=True,
        )

    @staticmethod
    def _outbox_attributes(
        em_host: str,
        notification: Notification,
        channels: Iterable[str],
        now: datetime,
        lease: timedelta,
    ) -> dict[str, Any]:
        return {
            "NotifiedAt": {"S": _iso(now)},
            "DedupKey": {"S": notification.dedup_key},
            "Notification": {"S": notification.to_json()},
            "Pending": {"SS": sorted(channels)},
            "PendingEmHost": {"S": em_host},
            "LeaseUntil": {"N": str(_epoch(now + lease))},
        }

    @staticmethod
    def _key(em_host: str, session_id: str) -> dict[str, Any]:
        return {"EmHost": {"S": em_host}, "SessionId": {"S": session_id}}

    def _get_item(self, key: dict[str, Any]) -> dict[str, Any] | None:
        try:
            response = self._client.get_item(TableName=self._table, Key=key, ConsistentRead=True)
        except (ClientError, BotoCoreError) as error:
            raise _translate("GetItem", error) from error
        item: dict[str, Any] | None = response.get("Item")
        if item is not None and _expired(item):
            return None
        return item

    def _call_query(self, **request: Any) -> list[dict[str, Any]]:
        try:
            items: list[dict[str, Any]] = self._client.query(**request).get("Items", [])
        except (ClientError, BotoCoreError) as error:
            raise _translate("Query", error) from error
        return items

    @staticmethod
    def _call(
        operation: str, method: Any, *, ignore_condition: bool = False, **request: Any
    ) -> bool:
        try:
            method(**request)
        except ClientError as error:
            if ignore_condition and _code(error) == _CONDITION_FAILED:
                return False
            raise _translate(operation, error) from error
        except BotoCoreError as error:
            raise _translate(operation, error) from error
        return True


def _stored(item: dict[str, Any]) -> StoredSession:
    progress = item.get("Progress", {}).get("N")
    return StoredSession(
        session_id=item["SessionId"]["S"],
        version=int(item["Version"]["N"]),
        fingerprint=item.get("Fingerprint", {}).get("S", ""),
        terminal=item.get("Terminal", {}).get("BOOL", False),
        notified="NotifiedAt" in item,
        progress=int(progress) if progress is not None else None,
        progress_since=_optional_time(item, "ProgressSince"),
        stuck_alerted=bool(item.get("StuckAlerted", {}).get("BOOL", False)),
        started_alerted=bool(item.get("StartedAlerted", {}).get("BOOL", False)),
    )


@dataclass(frozen=True, slots=True)
class PlanOutcome:
    """How a failover plan's last session that was notified ended."""

    result: str
    session_id: str
    failed_session_id: str | None


def _plan_key(plan_name: str) -> str:
    return f"{PLAN_PREFIX}{plan_name.strip().lower()[:PLAN_KEY_LIMIT]}"


def _optional_time(item: dict[str, Any], name: str) -> datetime | None:
    value = item.get(name, {}).get("S")
    return datetime.fromisoformat(value) if value else None


def _watcher(item: dict[str, Any]) -> Watcher:
    return Watcher(
        watching_since=datetime.fromisoformat(item["WatchingSince"]["S"]),
        last_poll_at=_optional_time(item, "LastPollAt"),
        consecutive_failures=int(item.get("ConsecutiveFailures", {}).get("N", "0")),
        auth_failures=int(item.get("AuthFailures", {}).get("N", "0")),
        next_attempt_at=_optional_time(item, "NextAttemptAt"),
        failing_since=_optional_time(item, "FailingSince"),
        unhealthy=bool(item.get("Unhealthy", {}).get("BOOL", False)),
        outbox_since=_optional_time(item, "OutboxSince"),
    )


def _expired(item: dict[str, Any]) -> bool:
    # DynamoDB deletes expired items late (and moto never does): treat them as gone.
    expires = item.get("ExpiresAt", {}).get("N")
    return expires is not None and int(expires) < time.time()


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "Unknown"))


def _translate(operation: str, error: ClientError | BotoCoreError) -> StateStoreError:
    if isinstance(error, ClientError):
        message = str(error.response.get("Error", {}).get("Message", ""))
        return StateStoreError(operation, _code(error), message)
    return StateStoreError(operation, type(error).__name__, str(error))
