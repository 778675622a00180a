"""Prefect flows: build_features, train, deploy, monitor.

Prefect's ephemeral API gives up after 20 s by default; on a loaded 2-core
machine (a benchmark, a training) it takes longer than that to start, and the
flow fails before it begins. Unless the user set it, allow two minutes.
"""

import os

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# no internet here: the server's usage telemetry only logs "Failed to send telemetry"
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
