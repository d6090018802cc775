"""`make run`: the real poller handler, locally, against moto and an EM.

Without `--vem-url` it starts the built-in EM simulator over HTTPS and plays a short
story; with it, it polls that EM. Every notification a subscriber receives is printed to
stdout as one JSON object per line; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

REPOSITORY = Path(__file__).resolve().parents[2]
TEMPLATE = REPOSITORY / "template.yaml"
SCHEDULED_EVENT = REPOSITORY / "events" / "scheduled-event.json"
DEMO_INTERVAL = 1.0
REAL_EM_INTERVAL = 60.0
EXIT_CANNOT_POLL = 3
EXIT_USAGE = 2


@dataclass
class LambdaContext:
    """Just enough of Lambda's context object for Powertools and the handler."""

    timeout_seconds: float
    function_name: str = "PollerFunction"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:PollerFunction"
    aws_request_id: str = ""
    started: float = 0.0

    def __post_init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self.started = time.monotonic()

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before this invocation's timeout."""
        return int((self.timeout_seconds - (time.monotonic() - self.started)) * 1000)


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """The options of `make run ARGS='...'`."""
    parser = argparse.ArgumentParser(
        prog="make run ARGS=...",
        description="Run the poller locally against moto and an EM (the simulator by default).",
    )
    parser.add_argument("--vem-url", help="a real EM, e.g. https://em.example.com:9398")
    parser.add_argument("--username", help="EM user; the password comes from $VEM_PASSWORD")
    parser.add_argument("--ca-bundle", type=Path, help="PEM file of the CA to trust for EM")
    parser.add_argument(
        "--session-id", action="append", default=[], help="watch this session (repeatable)"
    )
    parser.add_argument("--polls", type=int, help="stop after this many polls")
    parser.add_argument("--interval", type=float, help="seconds between polls")
    parser.add_argument(
        "--log-level", default="WARNING", help="handler log level (default WARNING)"
    )
    arguments = parser.parse_args(argv)
    if arguments.polls is not None and arguments.polls < 1:
        parser.error("--polls must be at least 1")
    if arguments.interval is not None and arguments.interval < 0:
        parser.error("--interval must not be negative")
    if arguments.vem_url is None and arguments.username:
        parser.error("--username needs --vem-url (the simulator has its own account)")
    return arguments


def fail(message: str, code: int) -> int:
    """Say why in one line on stderr and return the exit code."""
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str], out: TextIO) -> int:
    """Run the polls and print each received notification to `out`."""
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    with ExitStack() as stack:
        if arguments.vem_url:
            password = os.environ.get("VEM_PASSWORD", "")
            if not arguments.username or not password:
                return fail("--vem-url needs --username and the VEM_PASSWORD variable", EXIT_USAGE)
            if arguments.ca_bundle and not arguments.ca_bundle.is_file():
                return fail(f"--ca-bundle {arguments.ca_bundle} is not a file", EXIT_USAGE)
            em_url, username = arguments.vem_url, arguments.username
            ca_bundle = str(arguments.ca_bundle.resolve()) if arguments.ca_bundle else ""
            interval = REAL_EM_INTERVAL if arguments.interval is None else arguments.interval
            polls = arguments.polls
        else:
            from failover_local.em_simulator import DEMO_PASSWORD, EmSimulator
            from failover_local.story import demo_story
            from failover_local.tls import make_test_pki

            interval = DEMO_INTERVAL if arguments.interval is None else arguments.interval
            pace = max(interval, 0.2)
            story = demo_story(datetime.now(UTC), pace=pace)
            pki = make_test_pki(Path(stack.enter_context(tempfile.TemporaryDirectory())))
            simulator = stack.enter_context(EmSimulator(story, pki))
            em_url, username, password = simulator.url, "EM01\\svc-notifier", DEMO_PASSWORD
            ca_bundle = str(arguments.ca_bundle or simulator.ca_bundle)
            polls = arguments.polls or math.ceil(story.duration / pace) + 2
            print(
                f"EM simulator at {em_url}: {len(story.sessions)} sessions, "
                f"{polls} polls {interval:g} s apart",
                file=sys.stderr,
            )

        return run_polls(
            stack,
            em_url=em_url,
            credentials={"username": username, "password": password},
            parameters={
                "EmUrl": em_url,
                "EmCaBundle": ca_bundle,
                "EmSessionIds": ",".join(arguments.session_id),
                "LogLevel": arguments.log_level.upper(),
            },
            polls=polls,
            interval=interval,
            out=out,
        )


def run_polls(
    stack: ExitStack,
    *,
    em_url: str,
    credentials: dict[str, str],
    parameters: dict[str, str],
    polls: int | None,
    interval: float,
    out: TextIO,
) -> int:
    """Provision moto from the template, then invoke the handler `polls` times."""
    from failover_local.aws_local import Template, provision, start_moto

    server, endpoint = start_moto()
    stack.callback(server.stop)
    local_aws = provision(Template.load(TEMPLATE), endpoint, credentials, parameters)
    os.environ |= local_aws.environment
    if os.environ["POWERTOOLS_LOG_LEVEL"] not in ("DEBUG", "INFO"):
        # CloudWatch's metric records are noise on a terminal unless asked for.
        os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"

    from failover_poller.config import ConfigError
    from failover_poller.handler import lambda_handler

    event: dict[str, Any] = json.loads(SCHEDULED_EVENT.read_text(encoding="utf-8"))
    polled_once = False
    count = 0
    while polls is None or count < polls:
        if count:
            time.sleep(interval)
        count += 1
        try:
            report = lambda_handler(event, LambdaContext(timeout_seconds=60))
        except ConfigError as error:
            return fail(str(error), EXIT_USAGE)

        for line in local_aws.received():
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
            out.flush()
        if report["ok"]:
            polled_once = True
        elif not polled_once:
            return fail(f"cannot poll EM at {em_url}: {report['error']}", EXIT_CANNOT_POLL)
        print(_summary(count, report), file=sys.stderr)
    return 0


def _summary(count: int, report: dict[str, Any]) -> str:
    if not report["ok"]:
        return f"poll {count}: failed ({report['failure']}): {report['error']}"
    return (
        f"poll {count}: {report['sessions_seen']} sessions seen, "
        f"{report['sessions_changed']} changed, {report['notifications']} notified, "
        f"{report['session_errors']} unreadable"
    )


def entry_point() -> None:
    """Keep stdout for notifications: everything else printed goes to stderr."""
    out = sys.stdout
    sys.stdout = sys.stderr
    try:
        code = main(sys.argv[1:], out)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    entry_point()
