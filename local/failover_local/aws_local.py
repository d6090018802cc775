"""The local stand-in for AWS: moto's server on loopback, provisioned from `template.yaml`.

The state table, the topic and the event bus are created from their definitions in the
template (not from a second copy of them), less what has no local counterpart (their
KMS key, backups), and so are the function's environment variables, so the handler runs
against the same shapes as in AWS. Two SQS queues stand in
for subscribers: one subscribed to the topic, one the target of a rule on the bus, so what
the runner prints is what a subscriber really receives.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from cfnlint.decode import decode_str
from moto.server import ThreadedMotoServer

from failover_poller.notifications import EVENT_SOURCE

STACK_NAME = "local"
# The resources provisioned locally, by logical ID in `template.yaml`.
TABLE_ID = "StateTable"
TOPIC_ID = "FailoverTopic"
BUS_ID = "FailoverEventBus"
FUNCTION_ID = "PollerFunction"
# What a resource needs locally; the rest (its KMS key, backups) has no local counterpart.
TABLE_PROPERTIES = (
    "AttributeDefinitions",
    "KeySchema",
    "BillingMode",
    "GlobalSecondaryIndexes",
    "TimeToLiveSpecification",
)
TOPIC_PROPERTIES = ("DisplayName",)
REGION = "us-east-1"
ACCOUNT_ID = "123456789012"
_NO_VALUE = object()


class TemplateError(ValueError):
    """`template.yaml` lacks something the local runner needs."""


@dataclass(frozen=True, slots=True)
class Template:
    """The parts of `template.yaml` the local runner provisions from."""

    resources: Mapping[str, Any]
    globals_: Mapping[str, Any]
    conditions: Mapping[str, Any]
    parameters: Mapping[str, Any]

    @classmethod
    def load(cls, path: Path) -> Template:
        """Parse the SAM template with cfn-lint's decoder (it understands `!Ref` and kin)."""
        document, problems = decode_str(path.read_text(encoding="utf-8"))
        if problems or not isinstance(document, dict):
            raise TemplateError(f"{path} does not parse: {problems}")
        return cls(
            resources=document.get("Resources", {}),
            globals_=document.get("Globals", {}),
            conditions=document.get("Conditions", {}),
            parameters=document.get("Parameters", {}),
        )

    def resource(self, logical_id: str, resource_type: str) -> Mapping[str, Any]:
        """The properties of resource `logical_id`, which must be a `resource_type`."""
        body = self.resources.get(logical_id)
        if not isinstance(body, dict) or body.get("Type") != resource_type:
            raise TemplateError(f"template.yaml must hold a {resource_type} named {logical_id}")
        properties: Mapping[str, Any] = body.get("Properties", {})
        return properties


class Resolver:
    """Evaluates the intrinsic functions the template uses, with local physical IDs."""

    def __init__(self, template: Template, parameters: Mapping[str, str]) -> None:
        self._template = template
        self.refs: dict[str, str] = {"AWS::StackName": STACK_NAME, "AWS::Region": REGION}
        self.refs |= {"AWS::AccountId": ACCOUNT_ID, "AWS::Partition": "aws"}
        for name, body in template.parameters.items():
            default = body.get("Default")
            if name in parameters:
                self.refs[name] = parameters[name]
            elif default is not None:
                self.refs[name] = str(default)
        self.attributes: dict[str, str] = {}

    def resolve(self, value: Any) -> Any:  # noqa: PLR0911 (one return per intrinsic)
        """Return `value` with every intrinsic function replaced by its local value."""
        if isinstance(value, list):
            return [item for item in map(self.resolve, value) if item is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((function, argument),) = value.items()
            if function == "Ref":
                return _NO_VALUE if argument == "AWS::NoValue" else self._ref(argument)
            if function == "Fn::GetAtt":
                return (
                    self._attribute(*argument)
                    if isinstance(argument, list)
                    else (self._attribute(*argument.split(".", 1)))
                )
            if function == "Fn::Sub":
                return self._sub(argument)
            if function == "Fn::If":
                condition, if_true, if_false = argument
                return self.resolve(if_true if self.condition(condition) else if_false)
        resolved = {key: self.resolve(item) for key, item in value.items()}
        return {key: item for key, item in resolved.items() if item is not _NO_VALUE}

    def condition(self, name: str) -> bool:
        """Evaluate one of the template's conditions."""
        return bool(self._evaluate(self._template.conditions[name]))

    def _evaluate(self, expression: Any) -> Any:
        if isinstance(expression, dict) and len(expression) == 1:
            ((function, argument),) = expression.items()
            if function == "Fn::Not":
                return not self._evaluate(argument[0])
            if function == "Fn::Equals":
                return self.resolve(argument[0]) == self.resolve(argument[1])
            if function == "Condition":
                return self.condition(argument)
        return self.resolve(expression)

    def _ref(self, name: str) -> str:
        if name not in self.refs:
            raise TemplateError(f"no local value for Ref {name}")
        return self.refs[name]

    def _attribute(self, resource: str, attribute: str) -> str:
        key = f"{resource}.{attribute}"
        if key not in self.attributes:
            raise TemplateError(f"no local value for GetAtt {key}")
        return self.attributes[key]

    def _sub(self, argument: Any) -> str:
        text = argument if isinstance(argument, str) else argument[0]
        out, rest = "", text
        while "${" in rest:
            before, _, after = rest.partition("${")
            name, _, rest = after.partition("}")
            value = self._attribute(*name.split(".", 1)) if "." in name else self._ref(name)
            out += before + value
        return out + rest


@dataclass(frozen=True, slots=True)
class LocalAws:
    """Handles on what was provisioned: the handler's environment and the two subscribers."""

    endpoint_url: str
    environment: dict[str, str]
    sns_queue_url: str
    events_queue_url: str

    def received(self) -> Iterator[dict[str, Any]]:
        """Drain both subscriber queues and yield each notification as received."""
        sqs = boto3.client("sqs")
        for queue_url, convert in (
            (self.sns_queue_url, _sns_line),
            (self.events_queue_url, _event_line),
        ):
            while True:
                batch = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)
                messages = batch.get("Messages", [])
                if not messages:
                    break
                for message in messages:
                    yield convert(json.loads(message["Body"]))
                    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def _sns_line(envelope: Mapping[str, Any]) -> dict[str, Any]:
    """What an SQS subscriber received from the topic. Published with per-protocol
    variants, its message is the `sqs` variant: every variant as JSON, shown whole."""
    attributes = {
        key: item.get("Value") for key, item in envelope.get("MessageAttributes", {}).items()
    }
    message = envelope.get("Message")
    line: dict[str, Any] = {
        "channel": "sns",
        "subject": envelope.get("Subject"),
        "message": message,
        "attributes": attributes,
    }
    try:
        variants = json.loads(message) if isinstance(message, str) else None
    except json.JSONDecodeError:
        variants = None
    if isinstance(variants, dict) and {"default", "email", "sms"} <= set(variants):
        line["message"] = variants["default"]
        line["variants"] = {key: variants[key] for key in ("email", "sms", "default")}
    return line


def _event_line(event: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "channel": "eventbridge",
        "source": event.get("source"),
        "detail-type": event.get("detail-type"),
        "detail": event.get("detail"),
    }


def start_moto() -> tuple[ThreadedMotoServer, str]:
    """Start moto's server on loopback on a free port and point boto3 at it."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ |= {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    return server, endpoint


def provision(
    template: Template, endpoint: str, credentials: Mapping[str, str], parameters: Mapping[str, str]
) -> LocalAws:
    """Create the template's table, topic and bus, the EM secret and two subscriber queues.

    `credentials` (`username`, `password`) go into the emulated Secrets Manager, so the
    handler reads them exactly as it does in AWS; `parameters` override template defaults.
    """
    secret_arn = boto3.client("secretsmanager").create_secret(
        Name=f"{STACK_NAME}/em-credentials", SecretString=json.dumps(dict(credentials))
    )["ARN"]
    resolver = Resolver(template, {**parameters, "EmSecretArn": secret_arn})

    table = template.resource(TABLE_ID, "AWS::DynamoDB::Table")
    table_name = f"{STACK_NAME}-{TABLE_ID}"
    _create_table(table_name, resolver.resolve(_only(table, TABLE_PROPERTIES)))
    resolver.refs[TABLE_ID] = table_name
    resolver.attributes[f"{TABLE_ID}.Arn"] = (
        f"arn:aws:dynamodb:{REGION}:{ACCOUNT_ID}:table/{table_name}"
    )

    topic = template.resource(TOPIC_ID, "AWS::SNS::Topic")
    topic_attributes = {
        key: str(value) for key, value in resolver.resolve(_only(topic, TOPIC_PROPERTIES)).items()
    }
    topic_arn = boto3.client("sns").create_topic(
        Name=f"{STACK_NAME}-{TOPIC_ID}", Attributes=topic_attributes
    )["TopicArn"]
    resolver.refs[TOPIC_ID] = topic_arn

    bus = template.resource(BUS_ID, "AWS::Events::EventBus")
    bus_name = resolver.resolve(_only(bus, ("Name",)))["Name"]
    bus_arn = boto3.client("events").create_event_bus(Name=bus_name)["EventBusArn"]
    resolver.refs[BUS_ID] = bus_name
    resolver.attributes[f"{BUS_ID}.Arn"] = bus_arn

    function = template.resource(FUNCTION_ID, "AWS::Serverless::Function")
    variables = {
        **template.globals_.get("Function", {}).get("Environment", {}).get("Variables", {}),
        **function.get("Environment", {}).get("Variables", {}),
    }
    environment = {key: str(value) for key, value in resolver.resolve(variables).items()}
    return LocalAws(
        endpoint_url=endpoint,
        environment=environment,
        sns_queue_url=_subscribe_topic(topic_arn),
        events_queue_url=_subscribe_bus(bus_name),
    )


def _only(properties: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {key: value for key, value in properties.items() if key in names}


def _create_table(name: str, properties: Mapping[str, Any]) -> None:
    dynamodb = boto3.client("dynamodb")
    request: dict[str, Any] = {
        "TableName": name,
        "AttributeDefinitions": properties["AttributeDefinitions"],
        "KeySchema": properties["KeySchema"],
        "BillingMode": properties.get("BillingMode", "PAY_PER_REQUEST"),
    }
    if properties.get("GlobalSecondaryIndexes"):
        request["GlobalSecondaryIndexes"] = properties["GlobalSecondaryIndexes"]
    dynamodb.create_table(**request)

    ttl = properties.get("TimeToLiveSpecification")
    if ttl:
        dynamodb.update_time_to_live(
            TableName=name,
            TimeToLiveSpecification={
                "AttributeName": ttl["AttributeName"],
                "Enabled": bool(ttl["Enabled"]),
            },
        )


def _subscribe_topic(topic_arn: str) -> str:
    sqs = boto3.client("sqs")
    queue_url = sqs.create_queue(QueueName=f"{STACK_NAME}-sns-subscriber")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    boto3.client("sns").subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
    return queue_url


def _subscribe_bus(bus_name: str) -> str:
    sqs = boto3.client("sqs")
    events = boto3.client("events")
    queue_url = sqs.create_queue(QueueName=f"{STACK_NAME}-events-subscriber")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    events.put_rule(
        Name=f"{STACK_NAME}-all-failover-events",
        EventBusName=bus_name,
        EventPattern=json.dumps({"source": [EVENT_SOURCE]}),
    )
    events.put_targets(
        Rule=f"{STACK_NAME}-all-failover-events",
        EventBusName=bus_name,
        Targets=[{"Id": "subscriber", "Arn": queue_arn}],
    )
    return queue_url
