"""Adapters that hand a notification to SNS (people) and EventBridge (systems).

Each channel either takes the notification or raises `PublishError` with AWS's error code;
the service keeps the notification in the outbox until every channel has taken it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from failover_poller.notifications import EVENT_SOURCE, Notification

if TYPE_CHECKING:
    from mypy_boto3_events.client import EventBridgeClient
    from mypy_boto3_sns.client import SNSClient


class PublishError(Exception):
    """A channel did not take a notification; `code` is AWS's error code."""

    def __init__(self, channel: str, code: str, message: str) -> None:
        super().__init__(f"{channel} publish failed: {code}: {message}")
        self.channel = channel
        self.code = code


class Channel(Protocol):
    """Somewhere a notification is delivered."""

    name: str

    def publish(self, notification: Notification) -> None:
        """Deliver the notification or raise `PublishError`."""


class SnsChannel:
    """The failover topic: email and SMS subscribers, filtered by message attributes."""

    name = "sns"

    def __init__(self, topic_arn: str, client: SNSClient) -> None:
        self._topic_arn = topic_arn
        self._client = client

    def publish(self, notification: Notification) -> None:
        """Publish the subject, the body and the attributes to the topic."""
        attributes = {
            key: {"DataType": "String", "StringValue": value}
            for key, value in notification.attributes.items()
            if value
        }
        try:
            self._client.publish(
                TopicArn=self._topic_arn,
                Subject=notification.subject,
                Message=notification.message,
                MessageAttributes=attributes,  # type: ignore[arg-type]
            )
        except ClientError as error:
            raise PublishError(self.name, _code(error), _message(error)) from error
        except BotoCoreError as error:
            raise PublishError(self.name, type(error).__name__, str(error)) from error


class EventBridgeChannel:
    """The event bus, where rules route events to ticketing and chat."""

    name = "eventbridge"

    def __init__(self, bus_name: str, client: EventBridgeClient) -> None:
        self._bus_name = bus_name
        self._client = client

    def publish(self, notification: Notification) -> None:
        """Put one event; a failed entry counts as a failed publish."""
        entry = {
            "EventBusName": self._bus_name,
            "Source": EVENT_SOURCE,
            "DetailType": notification.detail_type,
            "Detail": json.dumps(notification.detail, separators=(",", ":")),
            "Resources": [],
        }
        try:
            response = self._client.put_events(Entries=[entry])  # type: ignore[list-item]
        except ClientError as error:
            raise PublishError(self.name, _code(error), _message(error)) from error
        except BotoCoreError as error:
            raise PublishError(self.name, type(error).__name__, str(error)) from error

        if response.get("FailedEntryCount", 0):
            failed = response["Entries"][0]
            raise PublishError(
                self.name, failed.get("ErrorCode", "FailedEntry"), failed.get("ErrorMessage", "")
            )


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "Unknown"))


def _message(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Message", ""))
