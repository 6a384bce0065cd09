"""The ingress's metrics: requests answered, publishes, the archive, the tenant directory, Genesys webhooks."""

from __future__ import annotations

from wabridge.engine import metrics

REQUESTS = metrics.REGISTRY.counter(
    "wabridge_ingress_requests_total", "HTTP requests answered by the ingress", ("route", "status")
)
PUBLISH_SECONDS = metrics.REGISTRY.histogram(
    "wabridge_ingress_publish_seconds", "Time from publish to the broker's confirm, per queued webhook"
)
ARCHIVE_FAILURES = metrics.REGISTRY.counter(
    "wabridge_ingress_archive_failures_total",
    "Raw webhooks not archived (failed, or dropped at the bound)",
    ("reason",),
)
ARCHIVES_RUNNING = metrics.REGISTRY.gauge("wabridge_ingress_archives_running", "Archive segment puts in flight")
ARCHIVE_BYTES = metrics.REGISTRY.gauge(
    "wabridge_ingress_archive_pending_bytes", "Raw webhook bytes buffered or being put by the archive"
)
UNROUTED = metrics.REGISTRY.counter(
    "wabridge_ingress_unrouted_total", "Webhook changes whose phone_number_id no tenant owns"
)
DISCONNECTS = metrics.REGISTRY.counter(
    "wabridge_ingress_disconnects_total", "Requests whose client hung up before its body was whole (not answered)"
)
QUEUED = metrics.REGISTRY.counter("wabridge_ingress_queued_total", "Queue messages confirmed by the broker")
TENANT_LOOKUPS = metrics.REGISTRY.counter(
    "wabridge_tenant_lookups_total", "Tenant directory lookups by the tier that answered", ("tier",)
)
TENANT_HIT_RATIO = metrics.REGISTRY.gauge(
    "wabridge_tenant_cache_hit_ratio",
    "Share of tenant lookups answered by the in-process cache",
    multiprocess_mode="livemin",  # several ingress processes: the coldest cache's
)
OUTBOUND_WEBHOOKS = metrics.REGISTRY.counter(
    "wabridge_outbound_webhooks_total", "Genesys outbound webhooks (agent messages) answered, by outcome", ("outcome",)
)
