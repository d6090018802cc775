"""With several EMs configured, a scheduled poll becomes one invocation per EM."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
from botocore.stub import Stubber

from failover_poller.config import Config
from failover_poller.runtime import fan_out

FIXTURES = Path(__file__).parents[1] / "fixtures"
ENVIRONMENT = json.loads((FIXTURES / "environment.json").read_text())
FUNCTION = "arn:aws:lambda:us-east-1:123456789012:function:cloud-failover-notifier-poller"


def test_each_em_gets_its_own_asynchronous_invocation() -> None:
    config = Config.from_environ(
        {**ENVIRONMENT, "EM_TARGETS": (FIXTURES / "em-targets.json").read_text()}
    )
    client = boto3.client(
        "lambda", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    with Stubber(client) as stub:
        for host in ("em01.example.test:9398", "em02.example.test:9398"):
            stub.add_response(
                "invoke",
                {"StatusCode": 202},
                {
                    "FunctionName": FUNCTION,
                    "InvocationType": "Event",
                    "Payload": json.dumps({"emHost": host}).encode(),
                },
            )
        stub.add_client_error("invoke", "TooManyRequestsException", http_status_code=429)

        outcome = fan_out(config, FUNCTION, client)

    assert outcome == {
        "em01.example.test:9398": "queued",
        "em02.example.test:9398": "queued",
        "em03.example.test": "TooManyRequestsException",
    }
