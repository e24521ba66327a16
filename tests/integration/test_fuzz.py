"""Schemathesis against the coordinator's own OpenAPI document, as CI runs it: every operation
fuzzed (examples, coverage and random phases, bounded), with no 5xx, every status and content
type documented, every body matching its schema, and schema-valid requests accepted (2xx, or
404/409 for ids that name nothing). POST /jobs and /jobs/batch are exempt from the last check only: some rules
cannot be written in JSON Schema (a pinned node must be up, coupled ranges), and refusing them
with a 422 that names the field is the contract. FFRTMP_FUZZ_EXAMPLES and FFRTMP_FUZZ_SEED
widen or vary a run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ffrtmp.nodes import write_heartbeat
from tests.integration.test_perimeter import Coordinator

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
EXAMPLES = os.environ.get("FFRTMP_FUZZ_EXAMPLES", "40")
SEED = os.environ.get("FFRTMP_FUZZ_SEED", "20261202")
CONFIG = """
[checks]
enabled = false
not_a_server_error.enabled = true
status_code_conformance.enabled = true
content_type_conformance.enabled = true
response_schema_conformance.enabled = true
positive_data_acceptance.enabled = true

[[operations]]
include-name = ["POST /jobs", "POST /jobs/batch"]
checks.positive_data_acceptance.enabled = false

[[operations]]
include-path-regex = "^/nodes/"
parameters = {{ id = "{node}" }}
"""


def test_schemathesis_finds_nothing(conn, redis_server, tmp_path):
    st = BIN / "st"
    if not st.exists():
        pytest.skip("schemathesis is not installed (the test extra has it)")
    write_heartbeat(conn, {"name": "fuzz-node", "slots": 2, "capabilities": ["cpu"]})
    c = Coordinator(tmp_path, redis_server, "--rate-limit-key", "off", "--rate-limit-address", "off")
    try:
        c.wait_up()
        config = tmp_path / "schemathesis.toml"
        config.write_text(CONFIG.format(node="fuzz-node"))
        res = subprocess.run(
            [
                str(st),
                "--config-file",
                str(config),
                "run",
                f"{c.url}/openapi.json",
                "-H",
                f"Authorization: Bearer {c.keys['admin']}",
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                EXAMPLES,
                "--seed",
                SEED,
                "--workers",
                "1",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=tmp_path,
        )
        out = res.stdout + res.stderr
        assert res.returncode == 0, out[-6000:]
        assert "generated" in out and " 0 passed" not in out, out[-2000:]
        print(out[-600:])
    finally:
        c.stop()
