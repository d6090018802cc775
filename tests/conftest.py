"""Test-wide set-up: the environment Lambda gives the function before it is imported."""

from __future__ import annotations

import os

# Powertools reads these when the handler module is imported, as in Lambda.
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "cloud-failover-notifier")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "CloudFailoverNotifier")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
