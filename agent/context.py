"""The agent's context, handed from the agent process to its slots and their horses."""

from __future__ import annotations

import dataclasses
import json
import os

from .pipeline import AgentContext

ENV = "FFRTMP_AGENT_CONTEXT"


def dump_context(ctx: AgentContext) -> str:
    return json.dumps(dataclasses.asdict(ctx))


def load_context() -> AgentContext:
    raw = os.environ.get(ENV)
    if not raw:
        raise RuntimeError(f"{ENV} is not set: slots must be started by ffrtmp-agent")
    return AgentContext(**json.loads(raw))
