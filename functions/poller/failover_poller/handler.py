"""Lambda entry point: one poll of the configured EM per scheduled invocation."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from failover_poller.config import Config
from failover_poller.preflight import run_preflight
from failover_poller.runtime import build_service, fan_out
from failover_poller.service import PollReport, PollService

logger = Logger()
metrics = Metrics()


@cache
def configuration() -> Config:
    """The configuration, read once per container (fails fast if invalid)."""
    return Config.from_environ(os.environ)


@cache
def poll_service(em_host: str | None) -> PollService:
    """The service for one EM, built once per container and EM."""
    config = configuration()
    return build_service(config, config.target(em_host))


def record_metrics(report: PollReport) -> None:
    """Publish a poll's counts as CloudWatch metrics (embedded metric format)."""
    metrics.add_metric("PollFailed", MetricUnit.Count, 0 if report.ok else 1)
    metrics.add_metric("SessionsSeen", MetricUnit.Count, report.sessions_seen)
    metrics.add_metric("SessionErrors", MetricUnit.Count, report.session_errors)
    metrics.add_metric("NotificationsClaimed", MetricUnit.Count, report.notifications)
    metrics.add_metric("Deliveries", MetricUnit.Count, report.deliveries)
    metrics.add_metric("PublishFailures", MetricUnit.Count, report.publish_failures)
    metrics.add_metric("SessionsGone", MetricUnit.Count, report.sessions_gone)
    metrics.add_metric("PollerUnhealthy", MetricUnit.Count, 1 if report.unhealthy else 0)
    for delay in report.notification_delays:
        metrics.add_metric("NotificationDelaySeconds", MetricUnit.Seconds, delay)


@metrics.log_metrics(raise_on_empty_metrics=False)
@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Poll EM once; EM faults are reported in the result and the metrics, not raised.

    With several EMs configured, the scheduled event fans out into one invocation per EM
    (an event `{"emHost": "host:port"}`), each polling its EM on its own. The event
    `{"preflight": true, "sendTest": false}` checks the deployment instead of polling.
    """
    if event.get("preflight") is True:
        result = run_preflight(configuration(), send_test=event.get("sendTest") is True)
        metrics.add_metric("PreflightFailed", MetricUnit.Count, 0 if result.ok else 1)
        logger.info("preflight finished", extra=result.as_dict())
        return result.as_dict()

    em_host = event.get("emHost")
    if em_host is None and len(configuration().targets) > 1:
        outcome = fan_out(configuration(), context.invoked_function_arn)
        logger.info("poll fanned out", extra={"targets": outcome})
        metrics.add_metric(
            "FanOutFailures", MetricUnit.Count, sum(v != "queued" for v in outcome.values())
        )
        return {"fanned_out": outcome}

    report = poll_service(em_host).poll(lambda: context.get_remaining_time_in_millis() / 1000)

    record_metrics(report)
    logger.info("poll finished", extra=report.as_dict())
    return report.as_dict()
