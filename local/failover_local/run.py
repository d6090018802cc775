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
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from failover_local.aws_local import LocalAws

REPOSITORY = Path(__file__).resolve().parents[2]
TEMPLATE = REPOSITORY / "template.yaml"
SCHEDULED_EVENT = REPOSITORY / "events" / "scheduled-event.json"
DEMO_INTERVAL = 1.0
REAL_EM_INTERVAL = 60.0
EXIT_CANNOT_POLL = 3
EXIT_USAGE = 2
# The demo polls this many more times than its story lasts, and calls a session stuck after
# this many story steps plus the second an EM may cut from a start time; its endless
# session starts at step 3.
DEMO_EXTRA_POLLS = 2
DEMO_STUCK_STEPS = 3.8
DEMO_TIME_CUT_SECONDS = 1.0
DEMO_ENDLESS_START = 3.0
MAX_INTERVAL = 24 * 3600.0
MIN_DEMO_INTERVAL = 0.5
SIMULATOR_USERNAME = "EM01\\svc-notifier"


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


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from error
    if not math.isfinite(value) or not 0 <= value <= MAX_INTERVAL:
        raise argparse.ArgumentTypeError(f"must be from 0 to {MAX_INTERVAL:g} seconds")
    return value


def _polls(text: str) -> int:
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from error
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _session_id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError("must be a session GUID") from error


def _em_url(text: str) -> str:
    from veeam_em.client import normalize_base_url

    try:
        return normalize_base_url(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _ca_bundle(text: str) -> Path:
    path = Path(text)
    try:
        pem = path.read_text(encoding="ascii", errors="replace")
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read {text}: {error.strerror}") from error
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise argparse.ArgumentTypeError(f"{text} holds no PEM certificate")
    return path.resolve()


def add_em_options(parser: argparse.ArgumentParser) -> None:
    """The options that choose the EM and the handler's log level, shared by `make run`
    and `make check`."""
    parser.add_argument(
        "--vem-url", type=_em_url, help="a real EM, e.g. https://em.example.com:9398"
    )
    parser.add_argument("--username", help="EM user; the password comes from $VEM_PASSWORD")
    parser.add_argument("--ca-bundle", type=_ca_bundle, help="PEM file of the CA to trust")
    parser.add_argument(
        "--session-id",
        type=_session_id,
        action="append",
        default=[],
        help="watch this session (repeatable)",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        default="WARNING",
        help="handler log level (default WARNING)",
    )


def check_em_options(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> None:
    """Stop with a usage error when the EM options contradict each other."""
    if arguments.vem_url is None and arguments.username:
        parser.error("--username needs --vem-url (the simulator has its own account)")


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """The options of `make run ARGS='...'`."""
    parser = argparse.ArgumentParser(
        prog="make run ARGS=...",
        description="Run the poller locally against moto and an EM (the simulator by default).",
    )
    add_em_options(parser)
    parser.add_argument("--polls", type=_polls, help="stop after this many polls")
    parser.add_argument("--interval", type=_interval, help="seconds between polls")
    arguments = parser.parse_args(argv)
    check_em_options(parser, arguments)
    return arguments


def real_em_account(arguments: argparse.Namespace) -> dict[str, str] | None:
    """The account for `--vem-url`: `--username` and the password in `VEM_PASSWORD`, or
    None when either is missing."""
    password = os.environ.get("VEM_PASSWORD", "")
    if not arguments.username or not password:
        return None
    return {"username": arguments.username, "password": password}


def template_parameters(
    arguments: argparse.Namespace, em_url: str, ca_bundle: str
) -> dict[str, str]:
    """The template parameters the EM options set."""
    return {
        "EmUrl": em_url,
        "EmCaBundle": ca_bundle,
        "EmSessionIds": ",".join(arguments.session_id),
        "LogLevel": arguments.log_level.upper(),
    }


def quiet_logging() -> None:
    """Logs on stderr at WARNING, without the noise of retries and moto's request lines
    (what failed is said once, at the end)."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="No application metrics")


def fail(message: str, code: int) -> int:
    """Say why in one line on stderr and return the exit code."""
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str], out: TextIO) -> int:
    """Run the polls and print each received notification to `out`."""
    arguments = parse_arguments(argv)
    quiet_logging()

    with ExitStack() as stack:
        if arguments.vem_url:
            account = real_em_account(arguments)
            if account is None:
                return fail("--vem-url needs --username and the VEM_PASSWORD variable", EXIT_USAGE)
            em_url = arguments.vem_url
            ca_bundle = str(arguments.ca_bundle) if arguments.ca_bundle else ""
            interval = REAL_EM_INTERVAL if arguments.interval is None else arguments.interval
            polls = arguments.polls
            on_ready: Callable[[], None] = lambda: None  # noqa: E731 (nothing to start)
            demo = {}
        else:
            from failover_local.em_simulator import DEMO_PASSWORD, EmSimulator
            from failover_local.story import demo_story
            from failover_local.tls import make_test_pki

            interval = DEMO_INTERVAL if arguments.interval is None else arguments.interval
            if interval < MIN_DEMO_INTERVAL:
                # The story's steps cannot be shorter than a poll takes; polls keep pace.
                print(
                    f"--interval {interval:g} is below the demo's {MIN_DEMO_INTERVAL:g} s; "
                    f"using {MIN_DEMO_INTERVAL:g}",
                    file=sys.stderr,
                )
                interval = MIN_DEMO_INTERVAL
            pace = interval
            story = demo_story(datetime.now(UTC), pace=pace)
            pki = make_test_pki(Path(stack.enter_context(tempfile.TemporaryDirectory())))
            simulator = stack.enter_context(EmSimulator(story, pki))
            em_url = simulator.url
            account = {"username": SIMULATOR_USERNAME, "password": DEMO_PASSWORD}
            ca_bundle = str(arguments.ca_bundle or simulator.ca_bundle)
            # The story's own thresholds: its endless session is stuck within seconds, while
            # every other session ends before that, even with EM's start times cut to the
            # second. The run lasts until the stuck session has been seen.
            stuck_after = DEMO_STUCK_STEPS * pace + DEMO_TIME_CUT_SECONDS
            seen_stuck = DEMO_ENDLESS_START * pace + stuck_after + pace
            length = max(story.duration, seen_stuck)
            polls = arguments.polls or math.ceil(length / pace) + DEMO_EXTRA_POLLS
            demo = {
                "StuckAfterMinutes": f"{stuck_after / 60:.4f}",
                "StuckWithoutProgressMinutes": f"{stuck_after / 60:.4f}",
            }
            print(
                f"EM simulator at {em_url}: {len(story.sessions)} sessions, "
                f"{polls} polls {interval:g} s apart",
                file=sys.stderr,
            )

            def on_ready() -> None:
                # The story starts with the first poll, not while AWS is being set up.
                simulator.story = demo_story(datetime.now(UTC), pace=pace)

        return run_polls(
            stack,
            em_url=em_url,
            credentials=account,
            parameters=template_parameters(arguments, em_url, ca_bundle) | demo,
            polls=polls,
            interval=interval,
            out=out,
            on_ready=on_ready,
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
    on_ready: Callable[[], None],
) -> int:
    """Provision moto from the template, then invoke the handler `polls` times."""
    local_aws = start_local_aws(stack, credentials=credentials, parameters=parameters)

    from failover_poller.config import Config, ConfigError
    from failover_poller.handler import lambda_handler

    try:
        Config.from_environ(os.environ)
    except ConfigError as error:
        return fail(str(error), EXIT_USAGE)

    event: dict[str, Any] = json.loads(SCHEDULED_EVENT.read_text(encoding="utf-8"))
    on_ready()
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


def start_local_aws(
    stack: ExitStack, *, credentials: dict[str, str], parameters: dict[str, str]
) -> LocalAws:
    """Start moto's server (stopped with `stack`), provision the template's resources in it
    and give this process the function's environment."""
    from failover_local.aws_local import Template, provision, start_moto

    server, endpoint = start_moto()
    stack.callback(server.stop)
    local_aws = provision(Template.load(TEMPLATE), endpoint, credentials, parameters)
    os.environ |= local_aws.environment
    if os.environ["POWERTOOLS_LOG_LEVEL"] not in ("DEBUG", "INFO"):
        # CloudWatch's metric records are noise on a terminal unless asked for.
        os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    return local_aws


def _summary(count: int, report: dict[str, Any]) -> str:
    if not report["ok"]:
        return f"poll {count}: failed ({report['failure']}): {report['error']}"
    return (
        f"poll {count}: {report['sessions_seen']} sessions seen, "
        f"{report['sessions_changed']} changed, {report['notifications']} notified, "
        f"{report.get('alerts', 0)} alerts, "
        f"{report['session_errors']} unreadable"
    )


def entry_point() -> None:
    """Keep stdout for notifications: everything else printed goes to stderr."""
    out = sys.stdout
    sys.stdout = sys.stderr
    # Powertools names and levels its loggers when they are made, at import: give it the
    # deployment's service name and a quiet level before anything imports the function.
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "cloud-failover-notifier")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    try:
        code = main(sys.argv[1:], out)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    entry_point()
