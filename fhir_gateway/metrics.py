"""Prometheus metrics of the push pipeline, one registry per process, served at /metrics.

Each process (web or worker) exposes its own counters; Prometheus sums across instances, so
multi-process file mode is not needed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

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
        # Freshness as Withings sees it: stored at T, last changed at Withings at `modified`.
        # Only incremental sweeps past an existing cursor set it, so a first backfill (years of
        # history) or a re-fetched window (old rows again) never reads as lag.
        self.sync_lag = Gauge(
            "fhir_gateway_sync_lag_seconds",
            "At the last sync that stored new Withings rows: seconds from the newest row's "
            "`modified` to it being stored",
            registry=self.registry,
        )
        self.notification_lag = Gauge(
            "fhir_gateway_notification_lag_seconds",
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


# Raises the GatewayError (401/403) that the app turns into an OperationOutcome.
Authorize = Callable[[Request], Awaitable[None]]


def metrics_route(
    registry: CollectorRegistry, path: str = "/metrics", *, authorize: Authorize | None = None
) -> Route:
    """GET /metrics in the Prometheus text exposition format, checked by `authorize` first.

    The app passes an admin bearer-token check (the FHIR routes' authenticator): the counters
    reveal how many people use the gateway and when, and Prometheus sends a bearer token
    natively (`authorization: {credentials_file: …}` in the scrape config), so a separate
    port or network rule is not needed.
    """

    async def serve_metrics(request: Request) -> Response:
        if authorize is not None:
            await authorize(request)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Route(path, serve_metrics, methods=["GET"])
