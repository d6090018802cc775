"""The deployable artifact is complete: built as `sam build` builds it, imported in a clean
interpreter with nothing else on its path, it polls the EM simulator through moto's server
and the notifications arrive.

The build is the one `sam build` does for `BuildMethod: python3.13` without Docker, done
with pip (the SAM CLI is not a test dependency: it pins older boto3, botocore and pydantic
than the rest of the tools and needs Python 3.13 itself on PATH): the layer's folder with
its requirements installed beside it, under `python/`; the function's folder with its own
requirements. The runtime supplies boto3 and its dependencies only, as Lambda's does.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from failover_local.aws_local import Template, provision, start_moto
from failover_local.em_simulator import DEMO_PASSWORD, EmSimulator
from failover_local.story import demo_story
from failover_local.tls import TestPki
from tests.integration.conftest import FINISHING, REPOSITORY, SCHEDULED_EVENT, USERNAME

pytestmark = pytest.mark.integration

TEMPLATE = Template.load(REPOSITORY / "template.yaml")
# What Lambda's Python runtime provides besides the standard library.
RUNTIME_DISTRIBUTIONS = (
    "boto3",
    "botocore",
    "s3transfer",
    "jmespath",
    "python-dateutil",
    "six",
    "urllib3",
)
PIP_SECONDS = 180

# Runs in the clean interpreter: Lambda's search order (function, layer, runtime), the
# template's handler, one scheduled invocation; then what it imported, and from where.
DRIVER = """
import importlib, json, os, sys, uuid

sys.path[:0] = json.loads(os.environ["ARTIFACT_PATH"])
module_name, function_name = os.environ["ARTIFACT_HANDLER"].rsplit(".", 1)
handler = getattr(importlib.import_module(module_name), function_name)


class Context:
    function_name = "PollerFunction"
    function_version = "$LATEST"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:PollerFunction"
    aws_request_id = str(uuid.uuid4())

    def get_remaining_time_in_millis(self):
        return 60_000


report = handler(json.loads(os.environ["ARTIFACT_EVENT"]), Context())
files = sorted({getattr(m, "__file__", None) or "" for m in list(sys.modules.values())})
print(json.dumps({"report": report, "files": [f for f in files if f]}))
"""


def _pip_install(requirements: Path, target: Path) -> None:
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--no-input", "-r", str(requirements), "-t", str(target),
        ],
        check=True, timeout=PIP_SECONDS, capture_output=True,
    )  # fmt: skip


def _copy_folder(source: Path, target: Path) -> None:
    shutil.copytree(
        source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
    )


def _link_runtime(target: Path) -> None:
    """Lambda's boto3 and its dependencies, linked from this environment one top-level
    package (or module) at a time, and nothing else."""
    target.mkdir()
    for name in RUNTIME_DISTRIBUTIONS:
        distribution = importlib.metadata.distribution(name)
        tops = {
            Path(str(file)).parts[0]
            for file in distribution.files or ()
            if not Path(str(file)).parts[0].endswith((".dist-info", ".data", ".."))
        }
        for top in tops:
            located = Path(str(distribution.locate_file(top)))
            if located.exists() and not (target / top).exists():
                (target / top).symlink_to(located)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The layer and the function built from the template's folders, plus the runtime."""
    resources = TEMPLATE.resources
    layer, function = resources["EmClientLayer"], resources["PollerFunction"]
    assert layer["Metadata"]["BuildMethod"] == "python3.13"
    assert TEMPLATE.globals_["Function"]["Runtime"] == "python3.13"
    build = tmp_path_factory.mktemp("build")

    layer_source = REPOSITORY / layer["Properties"]["ContentUri"]
    layer_python = build / "EmClientLayer" / "python"
    _copy_folder(layer_source, layer_python)
    _pip_install(layer_source / "requirements.txt", layer_python)

    function_source = REPOSITORY / function["Properties"]["CodeUri"]
    function_folder = build / "PollerFunction"
    _copy_folder(function_source, function_folder)
    _pip_install(function_source / "requirements.txt", function_folder)

    runtime = build / "runtime"
    _link_runtime(runtime)
    return {
        "path": [str(function_folder), str(layer_python), str(runtime)],
        "handler": function["Properties"]["Handler"],
    }


@pytest.fixture
def local_aws() -> Iterator[tuple[str, dict[str, str]]]:
    """moto's server with the template's resources; this process's environment restored
    afterwards (starting moto points it at the server)."""
    saved = dict(os.environ)
    server, endpoint = start_moto()
    try:
        yield endpoint, {key: os.environ[key] for key in os.environ if key.startswith("AWS_")}
    finally:
        server.stop()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def told_story(pki: TestPki) -> Iterator[EmSimulator]:
    """The demo story, just told: its sessions ended in the last few seconds."""
    duration = demo_story(datetime.now(UTC)).duration
    story = demo_story(datetime.now(UTC) - timedelta(seconds=duration + 1))
    with EmSimulator(story, pki) as running:
        yield running


def test_the_built_function_polls_with_only_its_layer_and_the_runtime(
    artifact: dict[str, Any],
    local_aws: tuple[str, dict[str, str]],
    told_story: EmSimulator,
    pki: TestPki,
) -> None:
    endpoint, aws_environment = local_aws
    deployed = provision(
        TEMPLATE,
        endpoint,
        {"username": USERNAME, "password": DEMO_PASSWORD},
        {"EmUrl": told_story.url, "EmCaBundle": pki.ca_bundle.read_text()},
    )
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "TMPDIR": tempfile.gettempdir(),
        **aws_environment,
        **deployed.environment,
        "POWERTOOLS_METRICS_DISABLED": "true",
        "ARTIFACT_PATH": json.dumps(artifact["path"]),
        "ARTIFACT_HANDLER": artifact["handler"],
        "ARTIFACT_EVENT": json.dumps(SCHEDULED_EVENT),
    }

    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", DRIVER],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    report = answer["report"]
    assert report["ok"], report
    received = list(deployed.received())
    sns = {line["attributes"]["session_id"]: line for line in received if line["channel"] == "sns"}
    events = {line["detail"]["sessionId"] for line in received if line["channel"] == "eventbridge"}
    assert {session: line["attributes"]["result"] for session, line in sns.items()} == FINISHING
    assert events == set(FINISHING)
    assert _outside(answer["files"], artifact) == []


def _outside(files: list[str], artifact: dict[str, Any]) -> list[str]:
    """The imported files that are neither in the build (function, layer, the runtime's
    linked packages) nor in the standard library: a package missing from a requirements
    file shows up here, or fails the import."""
    paths = sysconfig.get_paths()
    roots = [Path(paths["stdlib"]).resolve(), Path(paths["platstdlib"]).resolve()]
    roots += [Path(folder).resolve() for folder in artifact["path"][:2]]
    roots += [link.resolve() for link in Path(artifact["path"][2]).iterdir()]
    return [
        file for file in files if not any(Path(file).resolve().is_relative_to(r) for r in roots)
    ]
