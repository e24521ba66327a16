"""The OpenAPI 3 document, generated from the pydantic models the API validates with."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel, Field

from ffrtmp import __version__
from ffrtmp.model import NODE_NAME, JobSpec
from ffrtmp.nodes import NODE_STATES
from ffrtmp.queues import ALL_QUEUES, TIERS
from ffrtmp.submit import MAX_BATCH
from ffrtmp.terms import JobState

from .routes import ROUTES

NODE_PATTERN = f"^{NODE_NAME.pattern}$"


class HistoryEntry(BaseModel):
    time: str
    from_: str | None = Field(alias="from")
    to: str
    reason: str
    node: str | None
    attempt: int


class JobView(BaseModel):
    id: str
    state: JobState
    scenario: str
    queue: str
    priority: str
    hwaccel: str
    rq_queue: str
    node: str | None
    slot: str | None
    attempts: int
    max_attempts: int | None
    progress: dict[str, Any] | None = Field(
        description="frame, fps, bitrate_kbps, out_time_s, speed; percent and eta_s if duration is known"
    )
    error: dict[str, Any] | None = Field(description="reason, message, exit_code, stderr_tail")
    created_at: str | None
    started_at: str | None
    ended_at: str | None
    input: str | None
    output: str | None
    result: dict[str, Any] | None = Field(description="ffprobe's view of the verified output")
    labels: dict[str, str]
    spec: dict[str, Any]
    history: list[HistoryEntry] | None = None


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class Error(BaseModel):
    error: ErrorBody


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _err(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _jobs_list() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"jobs": {"type": "array", "items": _ref("JobView")}},
        "required": ["jobs"],
    }


@cache
def openapi_spec() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in (JobSpec, JobView, Error):
        s = model.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
        schemas.update(s.pop("$defs", {}))
        schemas[model.__name__] = s
    auth = {
        "401": _err("missing or invalid API key"),
        "403": _err("the key's role is not enough"),
        "429": _err("a rate limit was reached; Retry-After says when to try again"),
        "503": _err("the job store (Redis) is unreachable; retry shortly"),
    }
    id_param = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
    obj = {"type": "object"}
    details: dict[str, dict[str, Any]] = {
        "submitJob": {
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("JobSpec")}}},
            "responses": {
                "201": _json(_ref("JobView"), "queued"),
                "200": _json(_ref("JobView"), "a repeat of an Idempotency-Key: the job it made"),
                "400": _err("body is not JSON, or a malformed Idempotency-Key"),
                "409": _err("the Idempotency-Key was used for another request"),
                "413": _err("body over 64 KiB"),
                "422": _err("a field is invalid; `field` names it"),
            },
        },
        "submitJobs": {
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "jobs": {
                                    "type": "array",
                                    "items": _ref("JobSpec"),
                                    "minItems": 1,
                                    "maxItems": MAX_BATCH,
                                }
                            },
                            "required": ["jobs"],
                            "additionalProperties": False,
                        }
                    }
                },
            },
            "responses": {
                "201": _json(_jobs_list(), "all queued, in the order given"),
                "200": _json(_jobs_list(), "a repeat of an Idempotency-Key: the jobs it made"),
                "400": _err("body is not JSON, or a malformed Idempotency-Key"),
                "409": _err("the Idempotency-Key was used for another request"),
                "413": _err("body over 2 MiB"),
                "422": _err("an item is invalid (`field` is jobs[i].<field>); nothing was queued"),
            },
        },
        "listJobs": {
            "parameters": [
                {
                    "name": "state",
                    "in": "query",
                    "schema": {"type": "string", "enum": [s.value for s in JobState]},
                },
                {"name": "queue", "in": "query", "schema": {"type": "string", "enum": [*TIERS, *ALL_QUEUES]}},
                {"name": "node", "in": "query", "schema": {"type": "string", "pattern": NODE_PATTERN}},
                {
                    "name": "label",
                    "in": "query",
                    "description": "key=value: jobs submitted with this label",
                    "schema": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_.-]{0,62}=.{0,128}$"},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                },
                {"name": "cursor", "in": "query", "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}},
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "jobs": {"type": "array", "items": _ref("JobView")},
                            "next_cursor": {"type": ["string", "null"]},
                        },
                    },
                    "a page of jobs (shorter than the limit when the bounded scan ran out; "
                    "go on from next_cursor)",
                ),
                "422": _err("a filter is invalid"),
            },
        },
        "getJob": {"responses": {"200": _json(_ref("JobView"), "the job"), "404": _err("no such job")}},
        "jobLogs": {"responses": {"200": _json(obj, "logs"), "404": _err("no such job")}},
        "cancelJob": {
            "responses": {
                "200": _json(obj, "canceled (it was queued)"),
                "202": _json(obj, "cancel requested (it is running)"),
                "404": _err("no such job"),
                "409": _err("already finished"),
            }
        },
        "retryJob": {
            "responses": {
                "202": _json(obj, "queued again"),
                "404": _err("no such job"),
                "409": _err("the job is not in a retryable state"),
            }
        },
        "listNodes": {
            "parameters": [
                {"name": "state", "in": "query", "schema": {"type": "string", "enum": list(NODE_STATES)}},
                {"name": "draining", "in": "query", "schema": {"type": "string", "enum": ["true", "false"]}},
                {"name": "encoder", "in": "query", "schema": {"type": "string", "pattern": NODE_PATTERN}},
                {"name": "cursor", "in": "query", "schema": {"type": "string", "pattern": NODE_PATTERN}},
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1000},
                },
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "nodes": {"type": "array", "items": obj},
                            "next_cursor": {"type": ["string", "null"]},
                        },
                        "required": ["nodes", "next_cursor"],
                    },
                    "a page of nodes by name (go on from next_cursor)",
                ),
                "422": _err("a query parameter is invalid; `field` names it"),
            },
        },
        "getNode": {"responses": {"200": _json(obj, "node"), "404": _err("no such node")}},
        "drainNode": {"responses": {"200": _json(obj, "node"), "404": _err("no such node")}},
        "undrainNode": {"responses": {"200": _json(obj, "node"), "404": _err("no such node")}},
        "queues": {"responses": {"200": _json(obj, "queues")}},
        "health": {"responses": {"200": _json(obj, "alive")}},
        "ready": {"responses": {"200": _json(obj, "ready"), "503": _json(obj, "not ready")}},
        "metrics": {
            "responses": {
                "200": {
                    "description": "text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            }
        },
        "openapi": {"responses": {"200": _json(obj, "OpenAPI 3 document")}},
    }
    paths: dict[str, Any] = {}
    for route in (r for r in ROUTES if not r.console):
        op: dict[str, Any] = {"summary": route.summary, "operationId": route.operation_id}
        extra = details[route.operation_id]
        if "{id}" in route.path:
            op["parameters"] = id_param
        op.update({k: v for k, v in extra.items() if k != "responses"})
        op["responses"] = {**extra["responses"], **(auth if route.role else {})}
        if route.role is None:
            op["security"] = []
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "ffrtmp coordinator", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
