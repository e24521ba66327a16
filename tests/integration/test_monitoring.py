"""Monitoring as code, proven with real tools: promtool, amtool, a real Prometheus scraping a
running fleet, and a real agent writing logs and SLA violations."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from ffrtmp.jobs import get_view
from ffrtmp.model import validate_spec
from ffrtmp.submit import SubmitDefaults, submit
from tests.conftest import ROOT, LocalFleet, agent_argv, free_port, require, spawn_logged, wait_agent_ready

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
RULES = ROOT / "alerts" / "ffrtmp.rules.yml"
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
TEMPLATE_VALUES = {"${tier:regex}": "live|default|batch", "$node": ".*", "${datasource}": "ffrtmp"}


def run(*argv):
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_promtool_checks_and_unit_tests_pass():
    require("promtool")
    res = run("promtool", "check", "rules", str(RULES))
    assert res.returncode == 0, res.stdout + res.stderr
    res = run("promtool", "test", "rules", str(ROOT / "alerts" / "tests" / "ffrtmp.rules.test.yml"))
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr


def test_every_alert_has_severity_annotations_and_a_unit_test():
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]
    tests = yaml.safe_load((ROOT / "alerts" / "tests" / "ffrtmp.rules.test.yml").read_text())["tests"]
    tested = {}
    for t in tests:
        for a in t["alert_rule_test"]:
            tested.setdefault(a["alertname"], set()).add("fires" if a["exp_alerts"] else "quiet")
    names = {r["alert"] for r in rules}
    assert len(names) >= 12
    for r in rules:
        assert r["labels"]["severity"] in ("critical", "warning"), r["alert"]
        assert {"summary", "description", "runbook"} <= set(r["annotations"]), r["alert"]
        assert r["annotations"]["runbook"] == f"docs/runbook.md#{r['alert'].lower()}"
        assert f"\n## {r['alert']}\n" in (ROOT / "docs" / "runbook.md").read_text()
        assert tested.get(r["alert"]) == {"fires", "quiet"}, r["alert"]


def test_alertmanager_config_checks_and_routes_by_severity():
    require("amtool")
    cfg = str(ROOT / "alerts" / "alertmanager.yml")
    res = run("amtool", "check-config", cfg)
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr
    for labels, receiver in [
        (["severity=critical"], "ffrtmp-critical"),
        (["severity=warning"], "ffrtmp-warning"),
        (["severity=info"], "ffrtmp-default"),
    ]:
        res = run("amtool", "config", "routes", "test", f"--config.file={cfg}", *labels)
        assert res.stdout.strip() == receiver, (labels, res.stdout, res.stderr)
    inhibit = yaml.safe_load(Path(cfg).read_text())["inhibit_rules"]
    assert any(
        'severity = "critical"' in r["source_matchers"] and 'severity = "warning"' in r["target_matchers"]
        for r in inhibit
    )


def test_dashboards_are_valid_grafana_json_with_a_datasource_variable():
    assert {p.stem for p in DASHBOARDS} == {"fleet-overview", "queues-and-jobs", "nodes"}
    uids = set()
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        assert d["uid"] not in uids and d["title"] and d["schemaVersion"] >= 36
        uids.add(d["uid"])
        variables = {v["name"]: v for v in d["templating"]["list"]}
        assert (
            variables["datasource"]["type"] == "datasource"
            and variables["datasource"]["query"] == "prometheus"
        )
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)) and ids
        for p in d["panels"]:
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
            assert {"x", "y", "w", "h"} <= set(p["gridPos"])
            for t in p["targets"]:
                assert t["datasource"]["uid"] == "${datasource}" and t["expr"].strip()
    nodes = json.loads((ROOT / "grafana" / "dashboards" / "nodes.json").read_text())
    node_var = next(v for v in nodes["templating"]["list"] if v["name"] == "node")
    assert node_var["type"] == "query" and "label_values(" in node_var["definition"]
    for prov in (ROOT / "grafana" / "provisioning").rglob("*.yml"):
        assert yaml.safe_load(prov.read_text())["apiVersion"] == 1


def queries() -> list[tuple[str, str]]:
    out = []
    for g in yaml.safe_load(RULES.read_text())["groups"]:
        for r in g["rules"]:
            out.append((f"rule {r.get('alert') or r.get('record')}", r["expr"]))
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        for p in d["panels"]:
            for t in p["targets"]:
                out.append((f"{path.stem}: {p['title']}", t["expr"]))
        for v in d["templating"]["list"]:
            if v.get("definition", "").startswith("label_values("):
                metric = v["definition"][len("label_values(") :].split(",")[0]
                out.append((f"{path.stem}: variable {v['name']}", metric))
    return out


def substitute(expr: str) -> str:
    for k, v in TEMPLATE_VALUES.items():
        expr = expr.replace(k, v)
    return expr


def metric_names(expr: str) -> set[str]:
    no_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(re.findall(r"\b((?:ffrtmp|rq)_[a-z0-9_]+)\b", no_strings))


def exposition_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\w+)", line)
        if m:
            name, kind = m.groups()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            if kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
            if kind == "info":
                names.add(f"{name}_info")
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def get(url, key=None):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read().decode()


@pytest.fixture(scope="module")
def busy_fleet(tmp_path_factory):
    """A fleet that has completed, failed and canceled a few jobs."""
    f = LocalFleet(tmp_path_factory.mktemp("monfleet"))
    (f.inputs / "corrupt.mp4").write_bytes(b"not a video" * 50)
    f.cli("jobs", "submit", "--scenario", "480p-h264", "--duration", "1", "--wait", check=True)
    f.cli("jobs", "submit", "--scenario", "480p-h264", "--input", "corrupt.mp4", "--wait")
    f.cli(
        "jobs",
        "submit",
        "--scenario",
        "480p-h264",
        "--duration",
        "1",
        "--queue",
        "batch",
        "--hwaccel",
        "vaapi",
    )
    yield f
    f.stop()


def test_a_real_prometheus_evaluates_every_alert_and_panel_on_a_running_fleet(busy_fleet, tmp_path):
    prom = require("prometheus")
    f = busy_fleet
    port = free_port()
    cfg = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "ffrtmp-coordinator",
                "authorization": {"credentials": f.api_key},
                "static_configs": [{"targets": [f.url.removeprefix("http://")]}],
            },
            {"job_name": "ffrtmp-agent", "static_configs": [{"targets": [f"127.0.0.1:{f.metrics_port}"]}]},
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    res = run("promtool", "check", "config", str(tmp_path / "prometheus.yml"))
    assert res.returncode == 0, res.stdout + res.stderr
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            prom,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                targets = json.loads(get(f"{api}/targets"))["data"]["activeTargets"]
                if len(targets) == 2 and all(t["health"] == "up" for t in targets):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(
                "Prometheus never scraped both targets: " + (tmp_path / "prometheus.log").read_text()[-2000:]
            )
        time.sleep(3)  # a few scrapes and rule evaluations
        scraped = exposition_names(get(f.url + "/metrics", f.api_key)) | exposition_names(
            get(f"http://127.0.0.1:{f.metrics_port}/metrics")
        )
        in_tsdb = set(json.loads(get(f"{api}/label/__name__/values"))["data"])
        problems = []
        for where, expr in queries():
            q = substitute(expr)
            try:
                body = json.loads(get(f"{api}/query?" + urllib.parse.urlencode({"query": q})))
                if body["status"] != "success":
                    problems.append(f"{where}: {body}")
            except urllib.error.HTTPError as exc:
                problems.append(f"{where}: {exc.code} {exc.read().decode()[:300]}")
            for name in metric_names(q):
                if name not in scraped:
                    problems.append(f"{where}: metric {name} is not exported")
        assert not problems, "\n".join(problems)
        # the fleet did real work: these series have samples, not only declarations
        for name in (
            "ffrtmp_jobs_finished_total",
            "ffrtmp_job_run_seconds_bucket",
            "rq_jobs",
            "ffrtmp_agent_encoder_up",
            "ffrtmp_nodes",
            "ffrtmp_job_queue_wait_seconds_count",
        ):
            assert name in in_tsdb, name
        outcomes = json.loads(
            get(f"{api}/query?query=" + urllib.parse.quote("sum by (outcome) (ffrtmp_jobs_finished_total)"))
        )["data"]["result"]
        assert {r["metric"]["outcome"] for r in outcomes} >= {"completed", "failed"}
        rules = json.loads(get(f"{api}/rules"))["data"]["groups"]
        assert all(r["health"] == "ok" for g in rules for r in g["rules"]), rules
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_metrics_reads_never_clean_rq_registries(busy_fleet):
    """A scrape or GET /queues must not run RQ's cleanup as a side effect."""
    import redis
    from rq.registry import StartedJobRegistry

    conn = redis.Redis(unix_socket_path=str(busy_fleet.state / "redis" / "redis.sock"))
    key = StartedJobRegistry("batch.low", connection=conn).key
    conn.zadd(key, {"jghost:exec": time.time() - 3600})  # long expired: a cleanup would remove it
    try:
        get(busy_fleet.url + "/metrics", busy_fleet.api_key)
        get(busy_fleet.url + "/queues", busy_fleet.api_key)
        assert conn.zscore(key, "jghost:exec") is not None
    finally:
        conn.zrem(key, "jghost:exec")


def start_agent(redis_url, tmp_path, *extra):
    port = free_port()
    log_dir = tmp_path / "logs"
    argv = agent_argv(
        redis_url,
        "mon-agent",
        port,
        tmp_path / "work",
        "--slots",
        "1",
        "--live-slots",
        "0",
        "--log-dir",
        str(log_dir),
        "--heartbeat-interval",
        "2s",
        *extra,
    )
    proc = spawn_logged(tmp_path / "agent.out", argv)
    wait_agent_ready(port, proc, tmp_path / "agent.out")
    return proc, port, log_dir


def wait_done(conn, job_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = get_view(conn, job_id)
        if v["state"] in ("completed", "failed", "canceled", "timed_out", "rejected"):
            return v
        time.sleep(0.2)
    raise AssertionError(get_view(conn, job_id))


def test_agent_logs_json_lines_to_a_file_reopened_on_sighup_and_reports_sla_violations(
    conn, redis_server, tmp_path
):
    proc, port, log_dir = start_agent(redis_server, tmp_path)
    try:
        d = SubmitDefaults()
        blocker = submit(
            conn,
            validate_spec({"scenario": "live-4k", "duration": 7, "resolution": "64x64", "queue": "default"}),
            d,
        )["id"]
        deadline = time.monotonic() + 30  # the blocker must hold the slot before the live job arrives
        while get_view(conn, blocker)["state"] != "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        late = submit(
            conn,
            validate_spec(
                {
                    "scenario": "480p-h264",
                    "duration": 1,
                    "resolution": "64x64",
                    "queue": "live",
                    "priority": "high",
                }
            ),
            d,
        )["id"]
        assert wait_done(conn, blocker)["state"] == "completed"
        assert wait_done(conn, late)["state"] == "completed"
        logfile = log_dir / "agent.log"
        lines = [json.loads(x) for x in logfile.read_text().splitlines()]
        job_lines = [x for x in lines if x.get("job") == late]
        assert job_lines and all(x["attempt"] == 1 and x["node"] == "mon-agent" for x in job_lines)
        assert {x["msg"] for x in job_lines} >= {
            "attempt started",
            "attempt ended: completed (ffmpeg_exit_0)",
        }
        # logrotate: move the file away, SIGHUP, and the agent (and its slots) write a new one
        os.rename(logfile, log_dir / "agent.log.1")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not logfile.exists():
            time.sleep(0.1)
        third = submit(
            conn, validate_spec({"scenario": "480p-h264", "duration": 1, "resolution": "64x64"}), d
        )
        wait_done(conn, third["id"])
        fresh = [json.loads(x) for x in logfile.read_text().splitlines()]
        assert any(x["msg"] == "log files reopened" for x in fresh)
        assert any(x.get("job") == third["id"] for x in fresh)  # a slot's line, in the new file
        assert proc.poll() is None
        # the live job waited behind the blocker for more than the live tier's 5 s target
        v = json.loads(get(f"http://127.0.0.1:{port}/violations"))
        assert v["node"] == "mon-agent" and v["targets_s"]["live"] == 5.0
        assert v["violations"][0]["job"] == late and v["violations"][0]["reason"] == "queue_wait"
        assert v["violations"][0]["value"] > 5
        assert conn.hget("ffrtmp:stats:sla", "live|queue_wait") == b"1"
    finally:
        proc.terminate()
        proc.wait(30)


def test_unwritable_log_dir_falls_back_and_says_so(tmp_path):
    if os.geteuid() == 0:
        blocked = tmp_path / "file-not-dir"
        blocked.write_text("x")  # even root cannot create a directory below a regular file
    else:
        blocked = Path("/proc/ffrtmp-cannot-exist")
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    code = (
        "import logging; from ffrtmp.logs import setup_logging; "
        f"p = setup_logging('agent', 'info', {str(blocked / 'logs')!r}); "
        "logging.getLogger('t').info('hello'); print('PATH', p)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30)
    assert res.returncode == 0, res.stderr
    path = res.stdout.strip().splitlines()[-1].removeprefix("PATH ")
    assert path == str(tmp_path / "state" / "ffrtmp" / "log" / "agent.log")
    warn = json.loads(res.stdout.splitlines()[0])
    assert warn["level"] == "warning" and "not writable" in warn["msg"]
    assert "hello" in Path(path).read_text()
