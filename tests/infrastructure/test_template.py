"""`template.yaml` as an AWS reviewer reads it: least privilege, encryption, failure handling,
alarms and the parameters an operator sets, asserted on the template itself."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import lint
from cfnlint.config import ManualArgs
from cfnlint.decode import decode_str

pytestmark = pytest.mark.infrastructure

REPOSITORY = Path(__file__).parents[2]
TEMPLATE_TEXT = (REPOSITORY / "template.yaml").read_text(encoding="utf-8")
NO_VALUE = {"Ref": "AWS::NoValue"}
OPERATIONS_TOPIC = {"Ref": "OperationsTopic"}
KEY_ARN = {"Fn::GetAtt": ["EncryptionKey", "Arn"]}
EC2_IN_THIS_REGION = "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}"

# Every statement of the function's role: actions and resources, exactly. A new AWS call in
# the code needs a line here and a reason next to its statement in the template.
EXPECTED_STATEMENTS: dict[str, tuple[set[str], list[Any]]] = {
    "ReadWriteSessionState": (
        {
            "dynamodb:GetItem",
            "dynamodb:BatchGetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:Query",
        },
        [
            {"Fn::GetAtt": ["StateTable", "Arn"]},
            {"Fn::Sub": "${StateTable.Arn}/index/pending"},
        ],
    ),
    "PublishNotifications": ({"sns:Publish"}, [{"Ref": "FailoverTopic"}]),
    "PutFailoverEvents": ({"events:PutEvents"}, [{"Fn::GetAtt": ["FailoverEventBus", "Arn"]}]),
    "DescribeFailoverTopic": ({"sns:GetTopicAttributes"}, [{"Ref": "FailoverTopic"}]),
    "DescribeFailoverEventBus": (
        {"events:DescribeEventBus"},
        [{"Fn::GetAtt": ["FailoverEventBus", "Arn"]}],
    ),
    "ReadEmCredentials": ({"secretsmanager:GetSecretValue"}, [{"Ref": "EmSecretArn"}]),
    "UseDataKey": ({"kms:Decrypt", "kms:GenerateDataKey"}, [KEY_ARN]),
    "DecryptEmCredentials": ({"kms:Decrypt"}, [{"Ref": "EmSecretKmsKeyArn"}]),
    "SendFailedInvocations": ({"sqs:SendMessage"}, [{"Fn::GetAtt": ["FailedPollQueue", "Arn"]}]),
    "WriteLogs": (
        {"logs:CreateLogStream", "logs:PutLogEvents"},
        [{"Fn::GetAtt": ["PollerLogGroup", "Arn"]}],
    ),
    "WriteTraces": ({"xray:PutTraceSegments", "xray:PutTelemetryRecords"}, ["*"]),
    "DescribeVpcNetwork": ({"ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets"}, ["*"]),
    "ManageVpcNetworkInterfaces": (
        {
            "ec2:CreateNetworkInterface",
            "ec2:DeleteNetworkInterface",
            "ec2:AssignPrivateIpAddresses",
            "ec2:UnassignPrivateIpAddresses",
        },
        [
            {"Fn::Sub": f"{EC2_IN_THIS_REGION}:{kind}/*"}
            for kind in ("network-interface", "subnet", "security-group")
        ],
    ),
}
# Statements that exist only under a condition: Sid -> condition.
CONDITIONAL_STATEMENTS = {
    "DecryptEmCredentials": "HasSecretKmsKey",
    "DescribeVpcNetwork": "InVpc",
    "ManageVpcNetworkInterfaces": "InVpc",
}
# The only statements allowed Resource "*": their actions support no resource-level
# permissions.
STAR_RESOURCE_STATEMENTS = {"WriteTraces", "DescribeVpcNetwork"}

# Alarm -> (namespace, metric, dimension, statistic, comparison, threshold).
EXPECTED_ALARMS = {
    "PollerErrorsAlarm": (
        "AWS/Lambda",
        "Errors",
        {"FunctionName": {"Ref": "PollerFunction"}},
        "Sum",
        "GreaterThanOrEqualToThreshold",
        1,
    ),
    "PollerThrottlesAlarm": (
        "AWS/Lambda",
        "Throttles",
        {"FunctionName": {"Ref": "PollerFunction"}},
        "Sum",
        "GreaterThanOrEqualToThreshold",
        1,
    ),
    "PollerNotRunningAlarm": (
        "AWS/Lambda",
        "Invocations",
        {"FunctionName": {"Ref": "PollerFunction"}},
        "Sum",
        "LessThanThreshold",
        1,
    ),
    "FailedPollsAlarm": (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        {"QueueName": {"Fn::GetAtt": ["FailedPollQueue", "QueueName"]}},
        "Maximum",
        "GreaterThanThreshold",
        0,
    ),
    "PollerUnhealthyAlarm": (
        "CloudFailoverNotifier",
        "PollerUnhealthy",
        {"service": {"Ref": "ServiceName"}},
        "Maximum",
        "GreaterThanOrEqualToThreshold",
        1,
    ),
    "NotificationDelayAlarm": (
        "CloudFailoverNotifier",
        "NotificationDelaySeconds",
        {"service": {"Ref": "ServiceName"}},
        "Maximum",
        "GreaterThanThreshold",
        {"Ref": "NotificationDelayAlarmSeconds"},
    ),
}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    document, problems = decode_str(TEMPLATE_TEXT)
    assert not problems
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    resources: dict[str, Any] = template["Resources"]
    return resources


@pytest.fixture(scope="module")
def function(resources: dict[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = resources["PollerFunction"]["Properties"]
    return properties


@pytest.fixture(scope="module")
def statements(resources: dict[str, Any]) -> dict[str, tuple[Mapping[str, Any], str | None]]:
    """The role's statements by Sid, each with the condition it exists under (if any)."""
    policies = resources["PollerRole"]["Properties"]["Policies"]
    found: dict[str, tuple[Mapping[str, Any], str | None]] = {}
    for policy in policies:
        for statement, condition in _unconditional(policy["PolicyDocument"]["Statement"]):
            assert statement["Sid"] not in found
            found[statement["Sid"]] = (statement, condition)
    return found


def _unconditional(items: list[Any]) -> Iterator[tuple[Mapping[str, Any], str | None]]:
    for item in items:
        if "Fn::If" in item:
            condition, if_true, if_false = item["Fn::If"]
            assert if_false == NO_VALUE, "a conditional statement is absent, not replaced"
            yield if_true, condition
        else:
            yield item, None


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _properties(resources: dict[str, Any], resource_type: str) -> dict[str, Any]:
    return {
        name: body.get("Properties", {})
        for name, body in resources.items()
        if body["Type"] == resource_type
    }


# Linting


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1", "ap-southeast-2"])
def test_cfn_lint_finds_nothing_even_informational(region: str) -> None:
    matches = lint(TEMPLATE_TEXT, config=ManualArgs(include_checks=["I"], regions=[region]))

    assert [str(match) for match in matches] == []


def test_no_cfn_lint_check_is_suppressed(template: dict[str, Any]) -> None:
    metadata = [template.get("Metadata", {})]
    metadata += [body.get("Metadata", {}) for body in template["Resources"].values()]

    assert not [entry for entry in metadata if "cfn-lint" in entry]


# The resources the local runner and the code rely on


def test_one_table_one_bus_and_two_topics_by_logical_id(resources: dict[str, Any]) -> None:
    assert set(_properties(resources, "AWS::DynamoDB::Table")) == {"StateTable"}
    assert set(_properties(resources, "AWS::Events::EventBus")) == {"FailoverEventBus"}
    assert set(_properties(resources, "AWS::SNS::Topic")) == {"FailoverTopic", "OperationsTopic"}
    assert set(_properties(resources, "AWS::Serverless::Function")) == {"PollerFunction"}


def test_function_environment_is_what_the_code_reads(
    template: dict[str, Any], function: dict[str, Any]
) -> None:
    variables = {
        **template["Globals"]["Function"]["Environment"]["Variables"],
        **function["Environment"]["Variables"],
    }

    assert variables == {
        "POWERTOOLS_SERVICE_NAME": {"Ref": "ServiceName"},
        "POWERTOOLS_METRICS_NAMESPACE": "CloudFailoverNotifier",
        "POWERTOOLS_LOG_LEVEL": {"Ref": "LogLevel"},
        "EM_URL": {"Ref": "EmUrl"},
        "EM_SECRET_ARN": {"Ref": "EmSecretArn"},
        "EM_CA_BUNDLE": {"Fn::If": ["HasCaBundle", {"Ref": "EmCaBundle"}, NO_VALUE]},
        "EM_SESSION_IDS": {"Ref": "EmSessionIds"},
        "EM_TARGETS": {"Fn::If": ["HasMoreEms", {"Ref": "EmTargets"}, NO_VALUE]},
        "UNHEALTHY_AFTER_POLLS": {"Ref": "UnhealthyAfterPolls"},
        "NOTIFY_TIME_ZONE": {"Ref": "NotifyTimeZone"},
        "STUCK_AFTER_MINUTES": {"Ref": "StuckAfterMinutes"},
        "STUCK_WITHOUT_PROGRESS_MINUTES": {"Ref": "StuckWithoutProgressMinutes"},
        "NOTIFY_STARTED": {"Ref": "NotifyStarted"},
        "MUTED_PLANS": {"Ref": "MutedPlans"},
        "MUTE_WINDOWS": {"Ref": "MuteWindows"},
        "FIRST_SIGHT_LOOKBACK_MINUTES": {"Ref": "FirstSightLookbackMinutes"},
        "STATE_TTL_DAYS": {"Ref": "StateTtlDays"},
        "STATE_TABLE_NAME": {"Ref": "StateTable"},
        "TOPIC_ARN": {"Ref": "FailoverTopic"},
        "EVENT_BUS_NAME": {"Ref": "FailoverEventBus"},
    }


@pytest.mark.parametrize(
    ("name", "default"),
    [
        ("EmUrl", None),
        ("EmSecretArn", None),
        ("EmSecretKmsKeyArn", ""),
        ("EmCaBundle", ""),
        ("EmSessionIds", ""),
        ("ScheduleExpression", "rate(1 minute)"),
        ("FirstSightLookbackMinutes", 15),
        ("StateTtlDays", 90),
        ("LogLevel", "INFO"),
        ("ServiceName", "cloud-failover-notifier"),
        ("LogRetentionDays", 30),
        ("OperationsEmail", ""),
        ("NotificationDelayAlarmSeconds", 180),
        ("SubnetIds", ""),
        ("SecurityGroupIds", ""),
    ],
)
def test_parameter_and_its_default(template: dict[str, Any], name: str, default: Any) -> None:
    assert template["Parameters"][name].get("Default") == default


# Least privilege


def test_function_runs_with_the_explicit_role(
    resources: dict[str, Any], function: dict[str, Any]
) -> None:
    trust = resources["PollerRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]

    assert function["Role"] == {"Fn::GetAtt": ["PollerRole", "Arn"]}
    assert "Policies" not in function
    assert [(entry["Principal"], entry["Action"]) for entry in trust] == [
        ({"Service": "lambda.amazonaws.com"}, "sts:AssumeRole")
    ]
    assert "ManagedPolicyArns" not in resources["PollerRole"]["Properties"]


def test_role_holds_exactly_the_expected_statements(
    statements: dict[str, tuple[Mapping[str, Any], str | None]],
) -> None:
    assert set(statements) == set(EXPECTED_STATEMENTS)


@pytest.mark.parametrize("sid", sorted(EXPECTED_STATEMENTS))
def test_statement_names_its_actions_and_resources(
    statements: dict[str, tuple[Mapping[str, Any], str | None]], sid: str
) -> None:
    statement, condition = statements[sid]
    actions, resources = EXPECTED_STATEMENTS[sid]

    assert statement["Effect"] == "Allow"
    assert set(_as_list(statement["Action"])) == actions
    assert _as_list(statement["Resource"]) == resources
    assert condition == CONDITIONAL_STATEMENTS.get(sid)


def test_no_wildcard_action_and_star_resource_only_where_unavoidable(
    statements: dict[str, tuple[Mapping[str, Any], str | None]],
) -> None:
    for sid, (statement, _) in statements.items():
        assert not [action for action in _as_list(statement["Action"]) if "*" in action], sid
        assert "NotAction" not in statement and "NotResource" not in statement, sid
        if "*" in _as_list(statement["Resource"]):
            assert sid in STAR_RESOURCE_STATEMENTS
            assert _as_list(statement["Resource"]) == ["*"]


def test_function_uses_the_key_only_through_its_data_services(
    statements: dict[str, tuple[Mapping[str, Any], str | None]],
) -> None:
    data_key, _ = statements["UseDataKey"]
    secret_key, _ = statements["DecryptEmCredentials"]

    assert data_key["Condition"]["StringEquals"]["kms:ViaService"] == [
        {"Fn::Sub": f"{service}.${{AWS::Region}}.amazonaws.com"}
        for service in ("dynamodb", "sns", "sqs")
    ]
    assert secret_key["Condition"]["StringEquals"]["kms:ViaService"] == {
        "Fn::Sub": "secretsmanager.${AWS::Region}.amazonaws.com"
    }


def test_schedule_may_only_invoke_the_function(function: dict[str, Any]) -> None:
    """SAM turns a Schedule event into a rule and a Lambda permission whose SourceArn is
    that rule: no role, and nothing else can use it."""
    (event,) = function["Events"].values()

    assert event["Type"] == "Schedule"
    assert event["Properties"]["Schedule"] == {"Ref": "ScheduleExpression"}


# Network


def test_vpc_is_optional_and_follows_the_subnet_parameter(
    template: dict[str, Any], function: dict[str, Any]
) -> None:
    assert template["Parameters"]["SubnetIds"]["Type"] == "CommaDelimitedList"
    assert template["Parameters"]["SecurityGroupIds"]["Type"] == "CommaDelimitedList"
    assert template["Conditions"]["InVpc"] == {
        "Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "SubnetIds"}]}, ""]}]
    }
    assert function["VpcConfig"] == {
        "Fn::If": [
            "InVpc",
            {"SubnetIds": {"Ref": "SubnetIds"}, "SecurityGroupIds": {"Ref": "SecurityGroupIds"}},
            NO_VALUE,
        ]
    }


def test_subnets_without_security_groups_are_refused(template: dict[str, Any]) -> None:
    rule = template["Rules"]["SecurityGroupsWithSubnets"]

    assert rule["RuleCondition"] == {
        "Fn::Not": [{"Fn::EachMemberEquals": [{"Ref": "SubnetIds"}, ""]}]
    }
    assert rule["Assertions"][0]["Assert"] == {
        "Fn::Not": [{"Fn::EachMemberEquals": [{"Ref": "SecurityGroupIds"}, ""]}]
    }


# Encryption at rest


def test_table_is_encrypted_with_the_key_and_recoverable(resources: dict[str, Any]) -> None:
    table = resources["StateTable"]

    assert table["Properties"]["SSESpecification"] == {
        "SSEEnabled": True,
        "SSEType": "KMS",
        "KMSMasterKeyId": {"Ref": "EncryptionKey"},
    }
    assert table["Properties"]["PointInTimeRecoverySpecification"] == {
        "PointInTimeRecoveryEnabled": True
    }
    assert table["DeletionPolicy"] == "Retain"


@pytest.mark.parametrize("name", ["FailoverTopic", "OperationsTopic", "FailedPollQueue"])
def test_topics_and_queue_are_encrypted_with_the_key(resources: dict[str, Any], name: str) -> None:
    assert resources[name]["Properties"]["KmsMasterKeyId"] == {"Ref": "EncryptionKey"}


def test_key_rotates_and_outlives_the_table_it_encrypts(resources: dict[str, Any]) -> None:
    key = resources["EncryptionKey"]

    assert key["Properties"]["EnableKeyRotation"] is True
    assert key["DeletionPolicy"] == "Retain"
    assert key["UpdateReplacePolicy"] == "Retain"


def test_key_policy_admits_the_account_alarms_and_eventbridge(resources: dict[str, Any]) -> None:
    policy = resources["EncryptionKey"]["Properties"]["KeyPolicy"]["Statement"]
    grants = {statement["Sid"]: statement for statement in policy}

    assert set(grants) == {"AccountAdministersKey", "AlarmsAndEventBridgePublishToEncryptedTopics"}
    assert grants["AccountAdministersKey"]["Principal"] == {
        "AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}
    }
    services = grants["AlarmsAndEventBridgePublishToEncryptedTopics"]
    assert set(services["Principal"]["Service"]) == {
        "cloudwatch.amazonaws.com",
        "events.amazonaws.com",
    }
    assert set(services["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"}


# Failed invocations


def test_failed_invocations_go_to_the_dead_letter_queue(function: dict[str, Any]) -> None:
    config = function["EventInvokeConfig"]

    assert 120 <= config["MaximumEventAgeInSeconds"] <= 300
    assert config["MaximumRetryAttempts"] in (0, 1)
    assert config["DestinationConfig"]["OnFailure"] == {
        "Type": "SQS",
        "Destination": {"Fn::GetAtt": ["FailedPollQueue", "Arn"]},
    }


# Operations


@pytest.mark.parametrize("name", sorted(EXPECTED_ALARMS))
def test_alarm_watches_its_metric_and_notifies_operations(
    resources: dict[str, Any], name: str
) -> None:
    namespace, metric, dimensions, statistic, comparison, threshold = EXPECTED_ALARMS[name]
    alarm = resources[name]["Properties"]

    assert (alarm["Namespace"], alarm["MetricName"]) == (namespace, metric)
    assert {entry["Name"]: entry["Value"] for entry in alarm["Dimensions"]} == dimensions
    assert (alarm["Statistic"], alarm["ComparisonOperator"]) == (statistic, comparison)
    assert alarm["Threshold"] == threshold
    assert alarm["AlarmActions"] == [OPERATIONS_TOPIC]
    assert alarm["OKActions"] == [OPERATIONS_TOPIC]


def test_every_alarm_is_tested(resources: dict[str, Any]) -> None:
    assert set(_properties(resources, "AWS::CloudWatch::Alarm")) == set(EXPECTED_ALARMS)


def test_operations_email_is_subscribed_only_when_given(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    subscription = resources["OperationsEmailSubscription"]

    assert subscription["Condition"] == "HasOperationsEmail"
    assert template["Conditions"]["HasOperationsEmail"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "OperationsEmail"}, ""]}]
    }
    assert subscription["Properties"] == {
        "TopicArn": OPERATIONS_TOPIC,
        "Protocol": "email",
        "Endpoint": {"Ref": "OperationsEmail"},
    }


def test_logs_go_to_a_log_group_with_retention(
    resources: dict[str, Any], function: dict[str, Any]
) -> None:
    assert function["LoggingConfig"] == {"LogGroup": {"Ref": "PollerLogGroup"}}
    assert resources["PollerLogGroup"]["Properties"]["RetentionInDays"] == {
        "Ref": "LogRetentionDays"
    }


def test_tracing_is_active(template: dict[str, Any], function: dict[str, Any]) -> None:
    assert function.get("Tracing", template["Globals"]["Function"].get("Tracing")) == "Active"


# Deployment defaults


def test_samconfig_asks_only_what_a_user_must_decide() -> None:
    config = tomllib.loads((REPOSITORY / "samconfig.toml").read_text(encoding="utf-8"))
    deploy = config["default"]["deploy"]["parameters"]

    assert config["default"]["global"]["parameters"]["stack_name"] == "cloud-failover-notifier"
    assert deploy["capabilities"] == "CAPABILITY_IAM"
    assert deploy["confirm_changeset"] is True
    assert deploy["resolve_s3"] is True
    assert "region" not in deploy
    assert "parameter_overrides" not in deploy


def test_several_ems_fan_out_with_permissions_only_for_that(
    resources: dict[str, Any], function: dict[str, Any]
) -> None:
    policy = resources["FanOutPolicy"]

    assert policy["Condition"] == "HasMoreEms"
    assert policy["Properties"]["RoleName"] == {"Ref": "PollerRole"}
    grants = {
        statement["Sid"]: (statement["Action"], statement["Resource"])
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    }
    assert grants == {
        "InvokeOncePerEm": ("lambda:InvokeFunction", {"Fn::GetAtt": ["PollerFunction", "Arn"]}),
        "ReadMoreEmCredentials": (
            "secretsmanager:GetSecretValue",
            {
                "Fn::Sub": "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:"
                "${AWS::AccountId}:secret:${AWS::StackName}/em/*"
            },
        ),
    }
    variables = function["Environment"]["Variables"]
    assert variables["EM_TARGETS"] == {"Fn::If": ["HasMoreEms", {"Ref": "EmTargets"}, NO_VALUE]}
