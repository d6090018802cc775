"""Builds the poller's object graph from the configuration, once per Lambda container."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import boto3
from aws_lambda_powertools.utilities import parameters
from botocore.config import Config as BotocoreConfig
from botocore.exceptions import BotoCoreError, ClientError

from failover_poller.channels import EventBridgeChannel, SnsChannel
from failover_poller.config import Config, EmTarget
from failover_poller.em_source import Credentials, CredentialsError, EmSessionSource
from failover_poller.plans import PlanDirectory
from failover_poller.service import PollService
from failover_poller.state_store import StateStore

if TYPE_CHECKING:
    from mypy_boto3_lambda.client import LambdaClient

SECRET_CACHE_SECONDS = 300
# botocore's standard retry mode: bounded attempts with backoff and jitter on throttles.
AWS_CLIENT_CONFIG = BotocoreConfig(
    retries={"mode": "standard", "max_attempts": 3},
    connect_timeout=3,
    read_timeout=10,
    max_pool_connections=32,
)


def secret_credentials(secret_arn: str) -> Callable[[bool], Credentials]:
    """A reader of the EM account in a Secrets Manager secret `{"username", "password"}`.

    Powertools caches the secret; `refresh=True` reads it again (after a rotation).
    """

    def read(refresh: bool) -> Credentials:
        try:
            value: Any = parameters.get_secret(
                secret_arn, transform="json", max_age=SECRET_CACHE_SECONDS, force_fetch=refresh
            )
        except (
            parameters.exceptions.GetParameterError,
            parameters.exceptions.TransformParameterError,
        ) as error:
            raise CredentialsError(
                f"cannot read EM credentials from {secret_arn}: {error}"
            ) from error

        if not isinstance(value, dict) or not all(
            isinstance(value.get(key), str) and value.get(key) for key in ("username", "password")
        ):
            raise CredentialsError(
                f"secret {secret_arn} must be JSON with non-empty 'username' and 'password'"
            )
        return Credentials(username=value["username"], password=value["password"])

    return read


def build_service(config: Config, target: EmTarget) -> PollService:
    """Connect every adapter for polling one EM."""
    session = boto3.session.Session()
    plans = PlanDirectory(refresh_interval=config.alerts.plan_refresh, page_size=config.page_size)
    source = EmSessionSource(
        target.url,
        secret_credentials(target.secret_arn),
        ca_bundle=target.ca_bundle,
        timeouts=config.em_timeouts,
        page_size=config.page_size,
        plans=plans,
    )
    store = StateStore(
        config.state_table_name,
        session.client("dynamodb", config=AWS_CLIENT_CONFIG),
        ttl=config.state_ttl,
    )
    channels = (
        SnsChannel(config.topic_arn, session.client("sns", config=AWS_CLIENT_CONFIG)),
        EventBridgeChannel(
            config.event_bus_name, session.client("events", config=AWS_CLIENT_CONFIG)
        ),
    )
    return PollService(
        source,
        store,
        channels,
        em_host=target.host,
        watched_ids=target.watched_session_ids,
        first_sight_lookback=config.first_sight_lookback,
        unhealthy_after_polls=config.unhealthy_after_polls,
        alerts=config.alerts,
        plans=plans,
    )


def fan_out(
    config: Config, function_arn: str, client: LambdaClient | None = None
) -> dict[str, str]:
    """Invoke this function once per EM, asynchronously, so that one slow or broken EM
    never delays another. Returns each EM host with `queued` or AWS's error code.
    """
    client = client or boto3.session.Session().client("lambda", config=AWS_CLIENT_CONFIG)
    outcome: dict[str, str] = {}
    for target in config.targets:
        try:
            client.invoke(
                FunctionName=function_arn,
                InvocationType="Event",
                Payload=json.dumps({"emHost": target.host}).encode(),
            )
            outcome[target.host] = "queued"
        except ClientError as error:
            outcome[target.host] = str(error.response.get("Error", {}).get("Code", "Unknown"))
        except BotoCoreError as error:
            outcome[target.host] = type(error).__name__
    return outcome
