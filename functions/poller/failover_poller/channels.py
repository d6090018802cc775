"""Adapters that hand notifications to SNS (people) and EventBridge (systems).

Both publish in batches of up to ten entries and 256 KB a call (`PublishBatch`,
`PutEvents`). A channel reports, per entry, whether it took the notification; a failed
call raises `PublishError` with AWS's error code. The service keeps what a channel did not
take in the outbox until it does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from failover_poller.notifications import EVENT_SOURCE, Notification

if TYPE_CHECKING:
    from mypy_boto3_events.client import EventBridgeClient
    from mypy_boto3_sns.client import SNSClient

BATCH_ENTRIES = 10
BATCH_BYTES = 256 * 1024
# What a batch entry costs beyond its own body: IDs, attribute names, JSON punctuation.
ENTRY_OVERHEAD = 1024


class PublishError(Exception):
    """A channel did not take a notification; `code` is AWS's error code."""

    def __init__(self, channel: str, code: str, message: str) -> None:
        super().__init__(f"{channel} publish failed: {code}: {message}")
        self.channel = channel
        self.code = code


class Channel(Protocol):
    """Somewhere notifications are delivered."""

    name: str

    def publish_batch(self, entries: Sequence[tuple[str, Notification]]) -> dict[str, str]:
        """Deliver `(id, notification)` entries; return the IDs not taken, with error codes."""


def batches(
    entries: Sequence[tuple[str, Notification]], size: Any
) -> Iterator[list[tuple[str, Notification]]]:
    """Split entries into calls of at most ten entries and 256 KB by `size(notification)`."""
    batch: list[tuple[str, Notification]] = []
    used = 0
    for entry in entries:
        cost = size(entry[1]) + ENTRY_OVERHEAD
        if batch and (len(batch) == BATCH_ENTRIES or used + cost > BATCH_BYTES):
            yield batch
            batch, used = [], 0
        batch.append(entry)
        used += cost
    if batch:
        yield batch


def sns_message(notification: Notification) -> tuple[str, str | None]:
    """The SNS `Message` and `MessageStructure` for a notification: with per-protocol
    variants, a JSON object of them, plus `sqs` (all variants as JSON) for queues.
    """
    if not notification.variants:
        return notification.message, None
    variants = dict(notification.variants)
    variants.setdefault("default", notification.message)
    structured = {**variants, "sqs": json.dumps(variants, ensure_ascii=False)}
    return json.dumps(structured, ensure_ascii=False), "json"


class SnsChannel:
    """The failover topic: email and SMS subscribers, filtered by message attributes."""

    name = "sns"

    def __init__(self, topic_arn: str, client: SNSClient) -> None:
        self._topic_arn = topic_arn
        self._client = client

    def publish_batch(self, entries: Sequence[tuple[str, Notification]]) -> dict[str, str]:
        """Publish with `PublishBatch`, ten entries a call."""
        failed: dict[str, str] = {}
        for batch in batches(entries, lambda n: len(sns_message(n)[0].encode())):
            failed |= self._publish(batch)
        return failed

    def _publish(self, batch: list[tuple[str, Notification]]) -> dict[str, str]:
        request = []
        for index, (_, notification) in enumerate(batch):
            message, structure = sns_message(notification)
            entry: dict[str, Any] = {
                "Id": str(index),
                "Subject": notification.subject,
                "Message": message,
                "MessageAttributes": {
                    key: {"DataType": "String", "StringValue": value}
                    for key, value in notification.attributes.items()
                    if value
                },
            }
            if structure:
                entry["MessageStructure"] = structure
            request.append(entry)

        try:
            response = self._client.publish_batch(
                TopicArn=self._topic_arn,
                PublishBatchRequestEntries=request,  # type: ignore[arg-type]
            )
        except ClientError as error:
            raise PublishError(self.name, _code(error), _message(error)) from error
        except BotoCoreError as error:
            raise PublishError(self.name, type(error).__name__, str(error)) from error
        return {batch[int(item["Id"])][0]: item["Code"] for item in response.get("Failed", [])}


class EventBridgeChannel:
    """The event bus, where rules route events to ticketing and chat."""

    name = "eventbridge"

    def __init__(self, bus_name: str, client: EventBridgeClient) -> None:
        self._bus_name = bus_name
        self._client = client

    def publish_batch(self, entries: Sequence[tuple[str, Notification]]) -> dict[str, str]:
        """Put events, ten a call; a failed entry is a notification not taken."""
        failed: dict[str, str] = {}
        for batch in batches(entries, lambda n: len(_detail(n).encode())):
            failed |= self._put(batch)
        return failed

    def _put(self, batch: list[tuple[str, Notification]]) -> dict[str, str]:
        request = [
            {
                "EventBusName": self._bus_name,
                "Source": EVENT_SOURCE,
                "DetailType": notification.detail_type,
                "Detail": _detail(notification),
            }
            for _, notification in batch
        ]
        try:
            response = self._client.put_events(Entries=request)  # type: ignore[arg-type]
        except ClientError as error:
            raise PublishError(self.name, _code(error), _message(error)) from error
        except BotoCoreError as error:
            raise PublishError(self.name, type(error).__name__, str(error)) from error

        if not response.get("FailedEntryCount", 0):
            return {}
        results = response.get("Entries", [])
        if len(results) != len(batch):
            return {outbox_id: "FailedEntry" for outbox_id, _ in batch}
        return {
            outbox_id: result.get("ErrorCode", "FailedEntry")
            for (outbox_id, _), result in zip(batch, results, strict=True)
            if "ErrorCode" in result
        }


def _detail(notification: Notification) -> str:
    return json.dumps(notification.detail, separators=(",", ":"), ensure_ascii=False)


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "Unknown"))


def _message(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Message", ""))
