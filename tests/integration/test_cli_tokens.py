"""`heatwatch token` follows the API's rules: a name the API could not revoke is refused at
creation, revoking a name with no live token fails, and `token list` shows every credential
(never its secret)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from fastapi.testclient import TestClient

from api.app import create_app
from contract.config import load_api_config
from heatwatch.devstack import REPO


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "heatwatch", "token", *args], capture_output=True,
                          text=True, cwd=REPO, env=os.environ.copy(), timeout=60, check=False)


def test_token_names_follow_the_api_rule_revoke_fails_on_unknown_and_list_shows_all(tmp_path: Path) -> None:
    cfg = tmp_path / "api.yaml"
    cfg.write_text(yaml.safe_dump({"kind": "api", "store": f"sqlite:///{tmp_path / 'alerts.sqlite'}"}))
    bad = _run("add", str(cfg), "li ming")
    assert bad.returncode == 2 and "'li ming': 1 to 64 letters" in bad.stderr and "no spaces" in bad.stderr
    admin = _run("add", str(cfg), "ops-admin", "--role", "admin")
    assert admin.returncode == 0, admin.stderr
    disp = _run("add", str(cfg), "li.ming", "--role", "dispatcher")
    assert disp.returncode == 0 and disp.stdout.strip().startswith("hw_")

    listed = _run("list", str(cfg))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["name", "role", "created", "by", "revoked"]
    assert [ln.split()[:2] for ln in lines[1:]] == [["li.ming", "dispatcher"], ["ops-admin", "admin"]]
    assert "hw_" not in listed.stdout  # never the secret (nor its hash)

    # what the CLI created, the API can revoke, and the other way round
    with TestClient(create_app(load_api_config(cfg))) as client:
        auth = {"Authorization": f"Bearer {admin.stdout.strip()}"}
        assert client.delete("/v1/tokens/li.ming", headers=auth).status_code == 200
    gone = _run("revoke", str(cfg), "li.ming")
    assert gone.returncode == 1 and "no live token named 'li.ming'" in gone.stderr
    assert _run("revoke", str(cfg), "nobody").returncode == 1
    assert _run("revoke", str(cfg), "ops-admin").returncode == 0
    revoked = {ln.split()[0]: ln for ln in _run("list", str(cfg)).stdout.splitlines()[1:]}
    assert revoked["ops-admin"].endswith("UTC") and revoked["li.ming"].endswith("UTC")


def test_a_second_token_for_a_live_name_is_refused_in_one_line(tmp_path: Path) -> None:
    """A name with a live token is refused (CLI: one line naming how to list and revoke, exit 1;
    API: 409): `token revoke` ends every live token of a name, so two under one name could not be
    told apart or revoked one at a time. Once revoked, the name can be issued again."""
    cfg = tmp_path / "api.yaml"
    cfg.write_text(yaml.safe_dump({"kind": "api", "store": f"sqlite:///{tmp_path / 'alerts.sqlite'}"}))
    assert _run("add", str(cfg), "disp-li", "--role", "dispatcher").returncode == 0
    again = _run("add", str(cfg), "disp-li", "--role", "engineer")
    assert again.returncode == 1 and again.stdout == "", again.stdout
    assert again.stderr.count("\n") == 1, again.stderr
    assert "'disp-li' already has a live token (dispatcher" in again.stderr
    assert f"heatwatch token list {cfg}" in again.stderr
    assert f"heatwatch token revoke {cfg} disp-li" in again.stderr
    assert [ln.split()[0] for ln in _run("list", str(cfg)).stdout.splitlines()[1:]] == ["disp-li"]

    admin = _run("add", str(cfg), "ops-admin", "--role", "admin").stdout.strip()
    with TestClient(create_app(load_api_config(cfg))) as client:
        auth = {"Authorization": f"Bearer {admin}"}
        r = client.post("/v1/tokens", json={"name": "disp-li", "role": "dispatcher"}, headers=auth)
        assert r.status_code == 409 and "'disp-li' already has a live token" in r.json()["detail"], r.text

    assert _run("revoke", str(cfg), "disp-li").returncode == 0
    fresh = _run("add", str(cfg), "disp-li", "--role", "dispatcher")
    assert fresh.returncode == 0 and fresh.stdout.startswith("hw_"), fresh.stderr
