"""``heatwatch dashboards push``: the dashboards into a Grafana over its HTTP API (grafana-client).

For sites that cannot drop files into Grafana's provisioning folder (a shared or hosted
Grafana): makes the folder, loads every committed ``dashboards/*.json`` into it (overwriting
the same uid, so pushing again updates), makes the fleet overview the organisation's home
dashboard, and with ``--datasource-url`` creates or updates the InfluxDB data source the
dashboards name (``deploy/grafana/datasources.yaml`` with that URL).

The token comes from the environment (``GRAFANA_TOKEN``) or a file (``--token-file``), never
from the command line, where ``ps`` and the shell history would show it; a URL carrying a
password is refused for the same reason. A service-account token with the Editor role (Admin
to set the home dashboard) is enough.

grafana-client 3.11 (requests) rather than 4.x or 5.x: those moved to niquests, whose
urllib3-future replaces the environment's urllib3 at every interpreter start (a ``.pth`` hook;
grafana-client issue #179). The calls used here are the same in every version.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests
import yaml
from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException
from grafana_client.model import PersonalPreferences

from dashboards.build import BOARDS, DS, HERE, LANDING

TOKEN_ENV = "GRAFANA_TOKEN"
URL_ENV = "GRAFANA_URL"
DATASOURCES = HERE.parent / "deploy" / "grafana" / "datasources.yaml"


class PushError(Exception):
    """What went wrong, in one line for the operator."""


@dataclass(frozen=True)
class Pushed:
    file: str
    uid: str
    url: str
    version: int | None


def read_token(token_file: str | None, env: dict[str, str] | None = None) -> str:
    env = dict(os.environ) if env is None else env
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise PushError(f"--token-file {token_file}: {exc.strerror or exc}") from None
        if not token:
            raise PushError(f"--token-file {token_file} is empty")
        return token
    token = env.get(TOKEN_ENV, "").strip()
    if not token:
        raise PushError(f"no Grafana token: set {TOKEN_ENV} or give --token-file "
                        "(a service-account token; never on the command line)")
    return token


def check_url(url: str | None, flag: str = "--url") -> str:
    if not url:
        raise PushError(f"no Grafana URL: give --url or set {URL_ENV}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PushError(f"{flag} {url!r} is not an http(s) URL")
    if parts.password is not None:
        raise PushError(f"{flag} carries a password; put a token in {TOKEN_ENV} or --token-file instead")
    return url.rstrip("/")


def _datasource(url: str, database: str) -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]
    assert spec["uid"] == DS["uid"], "deploy/grafana/datasources.yaml names another data source"
    spec = {**spec, "url": url, "jsonData": {**spec["jsonData"], "dbName": database}}
    return spec


def push(url: str, token: str, *, folder: str = "heatwatch", home: bool = True,
         datasource_url: str | None = None, database: str = "heatwatch", timeout_s: float = 30,
         say: Callable[[str], None] = print) -> list[Pushed]:
    api = GrafanaApi.from_url(url, credential=token, timeout=timeout_s)
    try:
        if datasource_url is not None:
            spec = _datasource(datasource_url, database)
            try:
                api.datasource.get_datasource_by_uid(DS["uid"])
            except GrafanaClientError as exc:
                if exc.status_code != 404:
                    raise
                api.datasource.create_datasource(spec)
                say(f"data source {DS['uid']} created: {datasource_url} database {database}")
            else:
                api.datasource.update_datasource_by_uid(DS["uid"], spec)
                say(f"data source {DS['uid']} updated: {datasource_url} database {database}")
        try:
            api.folder.get_folder(folder)
        except GrafanaClientError as exc:
            if exc.status_code != 404:
                raise
            api.folder.create_folder(folder, uid=folder)
            say(f"folder {folder} created")
        out = []
        for name in BOARDS:
            board = orjson.loads((HERE / name).read_bytes())  # what provisioning loads, byte for byte
            r = api.dashboard.update_dashboard({"dashboard": board, "folderUid": folder, "overwrite": True,
                                                "message": "heatwatch dashboards push"})
            pushed = Pushed(name, str(r.get("uid", board["uid"])), f"{url}{r.get('url', '')}",
                            r.get("version"))
            out.append(pushed)
            say(f"{name}: {pushed.url} (version {pushed.version})")
        if home:
            landing = orjson.loads((HERE / LANDING).read_bytes())["uid"]
            api.organization.patch_preferences(PersonalPreferences(homeDashboardUID=landing))
            say(f"home dashboard: {landing}")
        return out
    except GrafanaException as exc:
        raise PushError(f"Grafana at {url} answered {exc.status_code}: {exc.message}") from None
    except requests.RequestException as exc:
        raise PushError(f"cannot reach Grafana at {url}: {type(exc).__name__}: {exc}") from None


def main(url: str | None, token_file: str | None, *, folder: str, home: bool,
         datasource_url: str | None, database: str) -> int:
    try:
        target = check_url(url or os.environ.get(URL_ENV))
        token = read_token(token_file)
        if datasource_url is not None:
            datasource_url = check_url(datasource_url, "--datasource-url")
    except PushError as exc:
        print(f"heatwatch dashboards push: {exc}", file=sys.stderr)
        return 2
    try:
        push(target, token, folder=folder, home=home, datasource_url=datasource_url, database=database)
    except PushError as exc:
        print(f"heatwatch dashboards push: {exc}", file=sys.stderr)
        return 1
    return 0
