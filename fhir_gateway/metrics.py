"""Prometheus metrics of the push pipeline, one registry per process, served at /metrics.

Each process (web or worker) exposes its own counters; Prometheus sums across instances, so
multi-process file mode is not needed.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


class GatewayMetrics:
    """The counters and gauges the webhook, the jobs and the Withings client update."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.notifications = Counter(
            "fhir_gateway_withings_notifications",
            "Withings notifications received, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.jobs = Counter(
            "fhir_gateway_jobs",
            "Background jobs finished, by job and outcome",
            ["job", "outcome"],
            registry=self.registry,
        )
        self.withings_calls = Counter(
            "fhir_gateway_withings_calls",
            "Requests sent to the Withings API, by action and envelope status",
            ["action", "status"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "fhir_gateway_dead_letters",
            "Jobs given up and recorded as dead letters, by job",
            ["job"],
            registry=self.registry,
        )
        self.sync_lag = Gauge(
            "fhir_gateway_sync_lag_seconds",
            "Seconds from the oldest notification a sync served to that sync's success",
            registry=self.registry,
        )
        self.inbox_backlog = Gauge(
            "fhir_gateway_inbox_backlog",
            "Notifications in the inbox not yet served by a sync (at the last sweep)",
            registry=self.registry,
        )

    def notification(self, outcome: str) -> None:
        self.notifications.labels(outcome=outcome).inc()

    def job(self, job: str, outcome: str) -> None:
        self.jobs.labels(job=job, outcome=outcome).inc()

    def withings_call(self, action: str, status: int | str) -> None:
        """Count one Withings request: `status` is the envelope status, or e.g. "transport"."""
        self.withings_calls.labels(action=action, status=str(status)).inc()

    def dead_letter(self, job: str) -> None:
        self.dead_letters.labels(job=job).inc()

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Current value of one sample (e.g. "fhir_gateway_jobs_total"); 0.0 if never set."""
        found = self.registry.get_sample_value(name, labels or {})
        return 0.0 if found is None else found


def metrics_route(registry: CollectorRegistry, path: str = "/metrics") -> Route:
    """GET /metrics in the Prometheus text exposition format."""

    async def serve_metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Route(path, serve_metrics, methods=["GET"])
