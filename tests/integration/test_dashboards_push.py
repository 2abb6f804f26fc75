"""``heatwatch dashboards push`` as a process, talking HTTP to a small local server that records
what grafana-client sends and answers as Grafana's HTTP API does (status codes and the fields the
command reads). Grafana itself cannot be installed here: this proves everything up to its
interface — the requests, their bodies (the committed dashboards, byte for byte as JSON), the
token in the Authorization header and nowhere on the command line — not Grafana's reaction."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from dashboards import build
from heatwatch.devstack import REPO, free_port

TOKEN = "glsa_test_0123456789abcdef"


class FakeGrafana:
    """Records (method, path, Authorization, JSON body); answers like Grafana 10/11's HTTP API."""

    def __init__(self, *, folders: set[str] | None = None, datasources: set[str] | None = None,
                 token: str = TOKEN) -> None:
        self.requests: list[tuple[str, str, str | None, Any]] = []
        self.folders = folders if folders is not None else set()
        self.datasources = datasources if datasources is not None else set()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = orjson.loads(self.rfile.read(n)) if n else None
                auth = self.headers.get("Authorization")
                outer.requests.append((self.command, self.path, auth, body))
                status, out = outer.route(self.command, self.path, body, auth == f"Bearer {token}")
                data = orjson.dumps(out)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = _answer

            def log_message(self, *_: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def route(self, method: str, path: str, body: Any, authorized: bool) -> tuple[int, Any]:
        if not authorized:
            return 401, {"message": "invalid API key"}
        if method == "GET" and path.startswith("/api/folders/"):
            uid = path.rsplit("/", 1)[1]
            if uid not in self.folders:
                return 404, {"message": "folder not found"}
            return 200, {"uid": uid, "title": uid}
        if method == "POST" and path == "/api/folders":
            self.folders.add(body["uid"])
            return 200, {"uid": body["uid"], "title": body["title"]}
        if method == "POST" and path == "/api/dashboards/db":
            uid = body["dashboard"]["uid"]
            return 200, {"status": "success", "uid": uid, "url": f"/d/{uid}/x", "version": 3, "id": 7}
        if method == "PATCH" and path == "/api/org/preferences":
            return 200, {"message": "Preferences updated"}
        if method == "GET" and path.startswith("/api/datasources/uid/"):
            uid = path.rsplit("/", 1)[1]
            if uid not in self.datasources:
                return 404, {"message": "Data source not found"}
            return 200, {"uid": uid}
        if method in ("POST", "PUT") and path.startswith("/api/datasources"):
            self.datasources.add(body["uid"])
            return 200, {"message": "Datasource added", "datasource": body}
        return 404, {"message": "not found"}

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    g = FakeGrafana()
    yield g
    g.close()


def run(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GRAFANA_TOKEN", "GRAFANA_URL")}
    if token is not None:
        env["GRAFANA_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "heatwatch", "dashboards", "push", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)


def test_push_makes_the_folder_loads_every_dashboard_and_the_home_page(grafana: FakeGrafana) -> None:
    r = run("--url", grafana.url)
    assert r.returncode == 0, r.stderr
    calls = [(m, p) for m, p, _a, _b in grafana.requests]
    assert calls == [("GET", "/api/folders/heatwatch"), ("POST", "/api/folders"),
                     *[("POST", "/api/dashboards/db")] * len(build.BOARDS), ("PATCH", "/api/org/preferences")]
    assert all(a == f"Bearer {TOKEN}" for _m, _p, a, _b in grafana.requests)
    posted = [b for m, p, _a, b in grafana.requests if p == "/api/dashboards/db"]
    for name, body in zip(build.BOARDS, posted, strict=True):
        assert body["dashboard"] == orjson.loads((build.HERE / name).read_bytes()), name
        assert body["folderUid"] == "heatwatch" and body["overwrite"] is True
    assert grafana.requests[1][3] == {"title": "heatwatch", "uid": "heatwatch"}
    assert grafana.requests[-1][3] == {"homeDashboardUID": "heatwatch-fleet"}
    assert f"fleet.json: {grafana.url}/d/heatwatch-fleet/x (version 3)" in r.stdout
    assert TOKEN not in r.stdout + r.stderr


def test_push_again_updates_in_place_and_can_set_up_the_data_source(grafana: FakeGrafana) -> None:
    grafana.folders.add("ops")
    r = run("--url", grafana.url + "/", "--folder", "ops", "--no-home",
            "--datasource-url", "http://influx.site:8086", "--database", "hw")
    assert r.returncode == 0, r.stderr
    calls = [(m, p) for m, p, _a, _b in grafana.requests]
    assert calls == [("GET", "/api/datasources/uid/heatwatch-influxdb"), ("POST", "/api/datasources"),
                     ("GET", "/api/folders/ops"), *[("POST", "/api/dashboards/db")] * len(build.BOARDS)]
    ds = grafana.requests[1][3]
    assert (ds["uid"], ds["type"], ds["url"], ds["jsonData"]["dbName"]) == (
        "heatwatch-influxdb", "influxdb", "http://influx.site:8086", "hw")
    grafana.requests.clear()
    r = run("--url", grafana.url, "--no-home", "--datasource-url", "http://influx.site:8086")
    assert r.returncode == 0 and "data source heatwatch-influxdb updated" in r.stdout
    uid_path = "/api/datasources/uid/heatwatch-influxdb"
    assert [(m, p) for m, p, _a, _b in grafana.requests][:2] == [("GET", uid_path), ("PUT", uid_path)]


def test_the_token_never_comes_from_the_command_line(grafana: FakeGrafana, tmp_path: Path) -> None:
    r = run("--url", grafana.url, "--token", TOKEN)
    assert r.returncode == 2 and "a token is never taken from the command line" in r.stderr
    assert TOKEN not in r.stderr  # not even echoed back in the error
    r = run("--url", grafana.url, token=None)
    assert r.returncode == 2 and "no Grafana token: set GRAFANA_TOKEN or give --token-file" in r.stderr
    r = run("--url", f"http://admin:secret@127.0.0.1:{grafana.server.server_port}", token=None)
    assert r.returncode == 2 and "--url carries a password" in r.stderr
    assert grafana.requests == []
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    assert run("--url", grafana.url, "--token-file", str(f), token=None).returncode == 0


def test_a_refused_token_or_no_grafana_is_one_line_naming_the_url(grafana: FakeGrafana) -> None:
    r = run("--url", grafana.url, token="wrong")
    assert r.returncode == 1
    assert r.stderr.strip() == (f"heatwatch dashboards push: Grafana at {grafana.url} answered 401: "
                                "Unauthorized")
    gone = f"http://127.0.0.1:{free_port()}"
    r = run("--url", gone)
    assert r.returncode == 1
    assert r.stderr.startswith(f"heatwatch dashboards push: cannot reach Grafana at {gone}")
    assert "Traceback" not in r.stderr
