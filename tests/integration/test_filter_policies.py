"""The subscription filter policies the README shows let through what they promise.

Each policy in `events/filter-policies/` filters a subscription of moto's SNS; every SNS
sample in `events/` is published with its attributes, and the queue shows what passed.
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

pytestmark = pytest.mark.integration

EVENTS = Path(__file__).parents[2] / "events"
SAMPLES = sorted(EVENTS.glob("notification-sns-*.json"))
EXPECTED = {
    "failures-only": {"notification-sns-failed"},
    "one-tenant": {
        "notification-sns-finished",
        "notification-sns-recovered",
        "notification-sns-started",
        "notification-sns-stuck",
    },
}


def test_every_policy_in_the_readme_is_a_tested_file() -> None:
    readme = (EVENTS.parent / "README.md").read_text()
    policies = {path.stem for path in (EVENTS / "filter-policies").glob("*.json")}

    assert policies == set(EXPECTED)
    for name in policies:
        policy = json.loads((EVENTS / "filter-policies" / f"{name}.json").read_text())
        assert json.dumps(policy) in readme, name


@pytest.mark.parametrize("policy", sorted(EXPECTED))
def test_a_filter_policy_passes_exactly_its_notifications(
    policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        sns, sqs = boto3.client("sns", "us-east-1"), boto3.client("sqs", "us-east-1")
        topic = sns.create_topic(Name="failover")["TopicArn"]
        queue = sqs.create_queue(QueueName="subscriber")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        filter_policy = (EVENTS / "filter-policies" / f"{policy}.json").read_text()
        sns.subscribe(
            TopicArn=topic,
            Protocol="sqs",
            Endpoint=arn,
            Attributes={"FilterPolicy": filter_policy, "RawMessageDelivery": "true"},
        )

        for sample in SAMPLES:
            line = json.loads(sample.read_text())
            sns.publish(
                TopicArn=topic,
                Subject=line["subject"],
                Message=sample.stem,
                MessageAttributes={
                    key: {"DataType": "String", "StringValue": value}
                    for key, value in line["attributes"].items()
                },
            )
        received = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]

    assert {message["Body"] for message in received} == EXPECTED[policy]
