"""The coordinator's route table: one place says which handler serves each method and path,
which role it needs (None: public) and what it does. The router, the auth middleware and the
OpenAPI document are all built from it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: str  # the name of the coordinator.app.Api method
    role: str | None  # the least role allowed; None: no key needed
    summary: str
    operation_id: str


ROUTES: tuple[Route, ...] = (
    Route("POST", "/jobs", "submit_job", "operator", "Submit a job", "submitJob"),
    Route("GET", "/jobs", "list_jobs", "viewer", "List jobs, newest first", "listJobs"),
    Route("GET", "/jobs/{id}", "get_job", "viewer", "One job", "getJob"),
    Route("GET", "/jobs/{id}/logs", "job_logs", "viewer", "FFmpeg stderr tail per attempt", "jobLogs"),
    Route("POST", "/jobs/{id}/cancel", "cancel_job", "operator", "Cancel a job", "cancelJob"),
    Route(
        "POST",
        "/jobs/{id}/retry",
        "retry_job",
        "operator",
        "Re-run a failed, timed-out, canceled or rejected job as its next attempt",
        "retryJob",
    ),
    Route("GET", "/nodes", "nodes", "viewer", "Agents", "listNodes"),
    Route("GET", "/nodes/{id}", "node", "viewer", "One agent", "getNode"),
    Route(
        "POST",
        "/nodes/{id}/drain",
        "set_drain",
        "operator",
        "Stop a node taking new jobs; running jobs finish",
        "drainNode",
    ),
    Route(
        "POST",
        "/nodes/{id}/undrain",
        "set_drain",
        "operator",
        "Let a drained node take jobs again",
        "undrainNode",
    ),
    Route("GET", "/queues", "queues", "viewer", "Queue depths, registries and oldest-job age", "queues"),
    Route("GET", "/health", "health", None, "Liveness (no auth)", "health"),
    Route("GET", "/ready", "ready", "viewer", "Readiness: Redis reachable", "ready"),
    Route("GET", "/metrics", "metrics_handler", "viewer", "Prometheus metrics", "metrics"),
    Route("GET", "/openapi.json", "openapi", "viewer", "This document", "openapi"),
)

DEFAULT_ROLE = "viewer"  # what a path outside the table (a 404, a 405) needs to be answered
_ROLES = {(r.method, r.path): r.role for r in ROUTES}


def role_needed(method: str, path: str) -> str | None:
    """The role a request needs (None: public) by its method and canonical path."""
    return _ROLES.get((method, path), DEFAULT_ROLE)
