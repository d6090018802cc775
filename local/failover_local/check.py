"""`make check`: the deployed function's preflight check, locally, against moto and an EM.

It takes `make run`'s EM options (without `--vem-url` it checks the built-in simulator),
provisions moto from the template as `make run` does, and invokes the real handler with
`events/preflight-event.json`. It prints one line per check and exits 1 if any fails.
With `--send-test` it also sends the test notification on both channels and shows what
the local subscribers received.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from failover_local.run import (
    EXIT_USAGE,
    REPOSITORY,
    SIMULATOR_USERNAME,
    LambdaContext,
    add_em_options,
    check_em_options,
    fail,
    quiet_logging,
    real_em_account,
    start_local_aws,
    template_parameters,
)

PREFLIGHT_EVENT = REPOSITORY / "events" / "preflight-event.json"
EXIT_CHECK_FAILED = 1


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """The options of `make check ARGS='...'`."""
    parser = argparse.ArgumentParser(
        prog="make check ARGS=...",
        description="Run the preflight check locally against moto and an EM "
        "(the simulator by default).",
    )
    add_em_options(parser)
    parser.add_argument(
        "--send-test",
        action="store_true",
        help="also send one test notification on both channels",
    )
    arguments = parser.parse_args(argv)
    check_em_options(parser, arguments)
    return arguments


def main(argv: Sequence[str], out: TextIO) -> int:
    """Run the preflight check and print its checks to `out`."""
    arguments = parse_arguments(argv)
    quiet_logging()

    with ExitStack() as stack:
        if arguments.vem_url:
            account = real_em_account(arguments)
            if account is None:
                return fail("--vem-url needs --username and the VEM_PASSWORD variable", EXIT_USAGE)
            em_url = arguments.vem_url
            ca_bundle = str(arguments.ca_bundle) if arguments.ca_bundle else ""
        else:
            from failover_local.em_simulator import DEMO_PASSWORD, EmSimulator
            from failover_local.story import demo_story
            from failover_local.tls import make_test_pki

            # The demo story, already told: every one of its sessions is there to count.
            story = demo_story(datetime.now(UTC))
            story = demo_story(datetime.now(UTC) - timedelta(seconds=story.duration + 1))
            pki = make_test_pki(Path(stack.enter_context(tempfile.TemporaryDirectory())))
            simulator = stack.enter_context(EmSimulator(story, pki))
            em_url = simulator.url
            account = {"username": SIMULATOR_USERNAME, "password": DEMO_PASSWORD}
            ca_bundle = str(arguments.ca_bundle or simulator.ca_bundle)
            print(f"EM simulator at {em_url}", file=sys.stderr)

        local_aws = start_local_aws(
            stack,
            credentials=account,
            parameters=template_parameters(arguments, em_url, ca_bundle),
        )

        from failover_poller.config import ConfigError
        from failover_poller.handler import lambda_handler

        event: dict[str, Any] = json.loads(PREFLIGHT_EVENT.read_text(encoding="utf-8"))
        event["sendTest"] = arguments.send_test
        try:
            result = lambda_handler(event, LambdaContext(timeout_seconds=60))
        except ConfigError as error:
            return fail(str(error), EXIT_USAGE)

        lines = [(c["ok"], c["name"], c["detail"]) for c in result["checks"]]
        if arguments.send_test:
            lines += _received(list(local_aws.received()))
        for ok, name, detail in lines:
            out.write(f"{'ok' if ok else 'FAIL':<4}  {name:<36}  {detail}\n")
        out.flush()
        return 0 if all(ok for ok, _, _ in lines) else EXIT_CHECK_FAILED


def _received(received: list[dict[str, Any]]) -> list[tuple[bool, str, str]]:
    """What the local subscribers (an SQS queue on the topic, a rule on the bus) got."""
    sns = [line for line in received if line["channel"] == "sns"]
    events = [line for line in received if line["channel"] == "eventbridge"]
    return [
        (
            len(sns) == 1,
            "received by subscriber (sns)",
            f"{len(sns)} message(s): " + ", ".join(repr(line["subject"]) for line in sns),
        ),
        (
            len(events) == 1,
            "received by subscriber (eventbridge)",
            f"{len(events)} event(s): " + ", ".join(repr(line["detail-type"]) for line in events),
        ),
    ]


def entry_point() -> None:
    """Keep stdout for the checks: everything else printed goes to stderr."""
    out = sys.stdout
    sys.stdout = sys.stderr
    try:
        code = main(sys.argv[1:], out)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    entry_point()
