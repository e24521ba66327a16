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
    rate_limited: bool = True  # /metrics is not: a scrape must answer while Redis is frozen
    console: bool = False  # a web console page or action: a coordinator.console.Console method,
    # authenticated by the console's session cookie (never a bearer key), left out of OpenAPI


ROUTES: tuple[Route, ...] = (
    Route("POST", "/jobs", "submit_job", "operator", "Submit a job", "submitJob"),
    Route(
        "POST",
        "/jobs/batch",
        "submit_batch",
        "operator",
        "Submit up to 1,000 jobs, all or nothing",
        "submitJobs",
    ),
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
    Route("GET", "/ready", "ready", None, "Readiness for load balancers: up or down (no auth)", "ready"),
    Route(
        "GET", "/metrics", "metrics_handler", "viewer", "Prometheus metrics", "metrics", rate_limited=False
    ),
    Route("GET", "/openapi.json", "openapi", "viewer", "This document", "openapi"),
    # the web console
    Route("GET", "/", "root", None, "The console", "consoleRoot", console=True),
    Route("GET", "/ui", "root", None, "The console", "consoleIndex", console=True),
    Route("GET", "/ui/login", "login_page", None, "Console login form", "consoleLoginForm", console=True),
    Route("POST", "/ui/login", "login", None, "Console login", "consoleLogin", console=True),
    Route("POST", "/ui/logout", "logout", "viewer", "Console logout", "consoleLogout", console=True),
    Route("GET", "/ui/fleet", "fleet", "viewer", "Console: the fleet", "consoleFleet", console=True),
    Route("GET", "/ui/queues", "queue_page", "viewer", "Console: queues", "consoleQueues", console=True),
    Route("GET", "/ui/jobs", "jobs", "viewer", "Console: jobs", "consoleJobs", console=True),
    Route("GET", "/ui/jobs/{id}", "job", "viewer", "Console: one job", "consoleJob", console=True),
    Route(
        "POST",
        "/ui/jobs/{id}/cancel",
        "job_action",
        "operator",
        "Console: cancel",
        "consoleCancel",
        console=True,
    ),
    Route(
        "POST",
        "/ui/jobs/{id}/retry",
        "job_action",
        "operator",
        "Console: retry",
        "consoleRetry",
        console=True,
    ),
    Route(
        "POST",
        "/ui/nodes/{id}/drain",
        "node_action",
        "operator",
        "Console: drain",
        "consoleDrain",
        console=True,
    ),
    Route(
        "POST",
        "/ui/nodes/{id}/undrain",
        "node_action",
        "operator",
        "Console: undrain",
        "consoleUndrain",
        console=True,
    ),
    Route("GET", "/ui/static/{name}", "static", None, "Console assets", "consoleStatic", console=True),
)

DEFAULT_ROLE = "viewer"  # what a path outside the table (a 404, a 405) needs to be answered
_BY_KEY = {(r.method, r.path): r for r in ROUTES}


def route_for(method: str, path: str) -> Route | None:
    """The route of a method and canonical path (None: not in the table, a 404 or a 405)."""
    return _BY_KEY.get((method, path))


def role_needed(method: str, path: str) -> str | None:
    """The role a request needs (None: public) by its method and canonical path."""
    route = _BY_KEY.get((method, path))
    return route.role if route else DEFAULT_ROLE
