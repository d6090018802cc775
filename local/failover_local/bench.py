"""`make bench`: what a poll costs, for N sessions, against a naive poller.

The real handler runs in a process of its own (the "handler process", whose peak memory
is reported) against the EM simulator, with a per-request latency, and moto's server in a
third process. For each N it measures a quiet poll (N sessions running, nothing changed)
and a poll in which all N finish, counting EM requests at the simulator and AWS calls at
botocore. A naive poller (one GET and one read per session, one write and one publish per
notification, one after the other) is measured in the same run on the same EM.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

REPOSITORY = Path(__file__).resolve().parents[2]
SCHEDULED_EVENT = REPOSITORY / "events" / "scheduled-event.json"
# The story's sessions run from 0 to 100 s; the simulator's clock is frozen inside each phase.
RUNNING_AT, FINISHED_AT = 50.0, 150.0
PUBLISH_OPERATIONS = ("PublishBatch", "Publish", "PutEvents")
READ_OPERATIONS = ("GetItem", "BatchGetItem", "Query")
WRITE_OPERATIONS = ("PutItem", "UpdateItem", "TransactWriteItems", "BatchWriteItem")
IMPORT_RUNS = 7


def bench_story(count: int, started_at: datetime) -> Any:
    """`count` sessions that run from 0 to 100 s and then succeed, two VMs each."""
    from failover_local.story import ScriptedSession, ScriptedVm, Story

    sessions = tuple(
        ScriptedSession(
            guid=str(uuid.uuid5(uuid.NAMESPACE_OID, f"bench-session-{index}")),
            plan_name=f"Tenant {index:04d} Failover Plan",
            backup_server="vbr-sp01.example.test",
            starts_at=0.0,
            ends_at=100.0,
            result="Success",
            failure_message=None,
            vms=(ScriptedVm(f"app-{index:04d}"), ScriptedVm(f"db-{index:04d}")),
        )
        for index in range(count)
    )
    return Story(sessions=sessions, started_at=started_at)


# --- the handler process ---------------------------------------------------------------


class CallCounter:
    """Counts every AWS API call made through botocore, by operation name."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def install(self) -> None:
        import botocore.client

        original = getattr(botocore.client.BaseClient, "_make_api_call")  # noqa: B009 (private)
        counter = self.calls

        def counted(client: Any, operation: str, params: dict[str, Any]) -> Any:
            counter[operation] += 1
            return original(client, operation, params)

        setattr(botocore.client.BaseClient, "_make_api_call", counted)  # noqa: B010


def naive_poll(environment: dict[str, str], em_host_prefix: str) -> dict[str, Any]:
    """The straightforward poller: every session read one by one, every change written and
    published one by one. Its state lives beside the real poller's, under another host.
    """
    import boto3

    from failover_poller.notifications import EVENT_SOURCE, render
    from veeam_em.client import EmClient

    secret = json.loads(
        boto3.client("secretsmanager").get_secret_value(SecretId=environment["EM_SECRET_ARN"])[
            "SecretString"
        ]
    )
    dynamodb, sns, events = boto3.client("dynamodb"), boto3.client("sns"), boto3.client("events")
    table = environment["STATE_TABLE_NAME"]
    notified = 0
    with EmClient(
        environment["EM_URL"],
        secret["username"],
        secret["password"],
        ca_bundle=environment["EM_CA_BUNDLE"],
    ) as client:
        host = f"{em_host_prefix}{client.host}"
        for ref in client.list_failover_sessions().refs:
            session = client.get_failover_session(ref.id)
            key = {"EmHost": {"S": host}, "SessionId": {"S": session.id}}
            stored = dynamodb.get_item(TableName=table, Key=key).get("Item")
            state = f"{session.state}/{session.result}"
            if stored is not None and stored["State"]["S"] == state:
                continue
            dynamodb.put_item(TableName=table, Item={**key, "State": {"S": state}})
            if session.is_terminal and stored is not None:
                notification = render(session, client.host)
                sns.publish(
                    TopicArn=environment["TOPIC_ARN"],
                    Subject=notification.subject,
                    Message=notification.message,
                )
                events.put_events(
                    Entries=[
                        {
                            "EventBusName": environment["EVENT_BUS_NAME"],
                            "Source": EVENT_SOURCE,
                            "DetailType": notification.detail_type,
                            "Detail": json.dumps(notification.detail),
                        }
                    ]
                )
                notified += 1
    return {"notifications": notified}


def peak_rss_kb() -> int:
    """This process's peak resident memory. `/proc`'s VmHWM starts afresh at exec, unlike
    `ru_maxrss`, which a child started by a large parent inherits on Linux."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def handler_process() -> None:
    """Serve `poll`, `naive` and `memory` commands on stdin, one JSON answer per line."""
    out = sys.stdout
    sys.stdout = sys.stderr
    counter = CallCounter()
    counter.install()

    from failover_local.run import LambdaContext
    from failover_poller.handler import lambda_handler

    event = json.loads(SCHEDULED_EVENT.read_text(encoding="utf-8"))
    for line in sys.stdin:
        command = line.strip()
        counter.calls.clear()
        started = time.perf_counter()
        if command == "poll":
            result: dict[str, Any] = lambda_handler(event, LambdaContext(timeout_seconds=900))
        elif command == "naive":
            result = naive_poll(dict(os.environ), "naive/")
        elif command == "cold":
            # A new container: nothing cached from earlier polls of this process.
            import failover_poller.handler as handler_module

            handler_module.poll_service.cache_clear()
            result = {}
        elif command == "memory":
            result = {"max_rss_kb": peak_rss_kb()}
        else:
            result = {"error": f"unknown command {command!r}"}
        answer = {
            "seconds": time.perf_counter() - started,
            "calls": dict(counter.calls),
            "result": result,
        }
        out.write(json.dumps(answer) + "\n")
        out.flush()


# --- the bench -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def moto_process() -> Iterator[str]:
    """moto's server in a process of its own, on loopback."""
    port = free_port()
    process = subprocess.Popen(  # noqa: S603 (this interpreter, fixed arguments)
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


class HandlerProcess:
    """The handler in a child process, driven one command at a time."""

    def __init__(self, environment: dict[str, str]) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "failover_local.bench", "--handler-process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=environment,
            text=True,
        )

    def ask(self, command: str) -> dict[str, Any]:
        stdin, stdout = self._stdin(), self._stdout()
        stdin.write(command + "\n")
        stdin.flush()
        answer: dict[str, Any] = json.loads(stdout.readline())
        return answer

    def close(self) -> None:
        self._stdin().close()
        self._process.wait(timeout=30)

    def _stdin(self) -> IO[str]:
        assert self._process.stdin is not None
        return self._process.stdin

    def _stdout(self) -> IO[str]:
        assert self._process.stdout is not None
        return self._process.stdout


def measure(ask: Callable[[str], dict[str, Any]], simulator: Any, command: str) -> dict[str, Any]:
    """Run one poll and gather its wall time, EM requests and AWS calls."""
    before = sum(simulator.request_counts.values())
    answer = ask(command)
    calls = Counter(answer["calls"])
    return {
        "seconds": answer["seconds"],
        "em": sum(simulator.request_counts.values()) - before,
        "reads": sum(calls[op] for op in READ_OPERATIONS),
        "writes": sum(calls[op] for op in WRITE_OPERATIONS),
        "sns": calls["PublishBatch"] + calls["Publish"],
        "events": calls["PutEvents"],
        # Notifications delivered: one per channel for each session told about.
        "notifications": answer["result"].get(
            "deliveries", 2 * answer["result"].get("notifications", 0)
        ),
    }


def bench_size(count: int, latency: float, endpoint: str, workdir: Path) -> dict[str, Any]:
    """Measure the real handler and the naive poller for `count` sessions."""
    from failover_local.aws_local import Template, provision
    from failover_local.em_simulator import DEMO_PASSWORD, EmSimulator
    from failover_local.tls import make_test_pki

    started_at = datetime.now(UTC) - timedelta(seconds=RUNNING_AT)
    moment = {"now": started_at + timedelta(seconds=RUNNING_AT)}
    pki = make_test_pki(workdir / f"pki-{count}")
    with EmSimulator(
        bench_story(count, started_at), pki, latency=latency, clock=lambda: moment["now"]
    ) as simulator:
        _post(f"{endpoint}/moto-api/reset")
        local = provision(
            Template.load(REPOSITORY / "template.yaml"),
            endpoint,
            {"username": "EM01\\svc-notifier", "password": DEMO_PASSWORD},
            {"EmUrl": simulator.url, "EmCaBundle": str(pki.ca_bundle), "LogLevel": "ERROR"},
        )
        environment = {
            **os.environ,
            **local.environment,
            "POWERTOOLS_METRICS_DISABLED": "true",
            "EM_READ_TIMEOUT_SECONDS": "120",
        }
        child = HandlerProcess(environment)
        try:
            ask = child.ask
            ask("poll")  # first sight: every session seen running, written once
            ask("naive")
            quiet = measure(ask, simulator, "poll")
            ask("cold")
            cold_quiet = measure(ask, simulator, "poll")
            naive_quiet = measure(ask, simulator, "naive")
            moment["now"] = started_at + timedelta(seconds=FINISHED_AT)
            finish = measure(ask, simulator, "poll")
            memory_kb = ask("memory")["result"]["max_rss_kb"]
            naive_finish = measure(ask, simulator, "naive")
        finally:
            child.close()
    return {
        "n": count,
        "quiet": quiet,
        "cold_quiet": cold_quiet,
        "naive_quiet": naive_quiet,
        "finish": finish,
        "naive_finish": naive_finish,
        "memory_mb": memory_kb / 1024,
    }


def _post(url: str) -> None:
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(url, method="POST")):  # noqa: S310
        pass


def import_times() -> tuple[float, float]:
    """Median seconds to import the handler, and boto3 + requests + defusedxml alone, each
    in a fresh interpreter with compiled bytecode (as after the first cold start)."""
    environment = {key: value for key, value in os.environ.items()}
    environment.pop("PYTHONDONTWRITEBYTECODE", None)
    environment["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="bench-pycache-")
    environment |= {"POWERTOOLS_SERVICE_NAME": "bench", "POWERTOOLS_METRICS_NAMESPACE": "bench"}
    probes = {
        "handler": "import failover_poller.handler",
        "libraries": "import boto3, requests, defusedxml.ElementTree",
    }
    medians = {}
    for name, statement in probes.items():
        code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
        runs = [
            float(
                subprocess.run(  # noqa: S603 (this interpreter, fixed code)
                    [sys.executable, "-c", code],
                    env=environment,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )
            for _ in range(IMPORT_RUNS + 1)
        ]
        medians[name] = statistics.median(runs[1:])
    return medians["handler"], medians["libraries"]


def table(results: list[dict[str, Any]], handler_import: float, libraries_import: float) -> str:
    """The results as a Markdown table."""
    lines = [
        "| N | poll | wall (s) | EM requests | DynamoDB reads | DynamoDB writes "
        "| SNS calls | EventBridge calls | notifications |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        for label, key in (
            ("quiet", "quiet"),
            ("quiet, new container", "cold_quiet"),
            ("quiet, naive", "naive_quiet"),
            ("all finish", "finish"),
            ("all finish, naive", "naive_finish"),
        ):
            row = result[key]
            notifications = row["notifications"]
            lines.append(
                f"| {result['n']} | {label} | {row['seconds']:.3f} | {row['em']} | "
                f"{row['reads']} | {row['writes']} | {row['sns']} | {row['events']} | "
                f"{notifications} |"
            )
    lines += [
        "",
        "| N | quiet poll, naive / ours | quiet, new container, naive / ours "
        "| all finish, naive / ours | handler peak memory (MB) |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        naive = result["naive_quiet"]["seconds"]
        quiet_ratio = naive / result["quiet"]["seconds"]
        cold_ratio = naive / result["cold_quiet"]["seconds"]
        finish_ratio = result["naive_finish"]["seconds"] / result["finish"]["seconds"]
        lines.append(
            f"| {result['n']} | {quiet_ratio:.1f}x | {cold_ratio:.1f}x | {finish_ratio:.1f}x | "
            f"{result['memory_mb']:.1f} |"
        )
    lines += [
        "",
        f"Import time (median of {IMPORT_RUNS}, compiled bytecode): handler "
        f"{handler_import * 1000:.0f} ms; boto3 + requests + defusedxml alone "
        f"{libraries_import * 1000:.0f} ms; ratio {handler_import / libraries_import:.2f}.",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(prog="make bench ARGS=...", description=__doc__)
    parser.add_argument(
        "--sizes", default="10,100,1000", help="session counts (default 10,100,1000)"
    )
    parser.add_argument(
        "--latency", type=float, default=0.025, help="EM latency per request, s (default 0.025)"
    )
    parser.add_argument("--handler-process", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.handler_process:
        handler_process()
        return 0

    sizes = [int(size) for size in arguments.sizes.split(",")]
    os.environ |= {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    results = []
    with moto_process() as endpoint, tempfile.TemporaryDirectory() as workdir:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        for count in sizes:
            print(f"bench: N = {count} ...", file=sys.stderr)
            results.append(bench_size(count, arguments.latency, endpoint, Path(workdir)))
    handler_import, libraries_import = import_times()
    print(f"EM latency {arguments.latency * 1000:.0f} ms per request.\n")
    print(table(results, handler_import, libraries_import))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
