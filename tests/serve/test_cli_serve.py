"""``deltaguard serve`` and ``deltaguard serve hash-key``: wiring, exit codes, one-line errors."""

from __future__ import annotations

import re

import yaml
from typer.testing import CliRunner

from deltaguard.cli import app
from deltaguard.serve import hash_key

runner = CliRunner()


def test_hash_key_makes_a_key_and_an_entry():
    result = runner.invoke(app, ["serve", "hash-key", "--tenant", "acme", "--delta", "deltas/acme"])
    assert result.exit_code == 0, result.output
    key = re.search(r"api key \(shown once, give it to the tenant\): (\S+)", result.output).group(1)
    digest = re.search(r"key_sha256: ([0-9a-f]{64})", result.output).group(1)
    assert hash_key(key) == digest
    entry = yaml.safe_load(result.output.split("# tenants file entry")[1])
    assert entry == {"tenants": [{"name": "acme", "delta": "deltas/acme", "key_sha256": digest}]}


def test_hash_key_hashes_a_key_from_stdin_without_echoing_it():
    result = runner.invoke(app, ["serve", "hash-key", "--key-stdin", "--admin"], input="my-admin-key-0123456789\n")
    assert result.exit_code == 0, result.output
    assert f"admin_key_sha256: {hash_key('my-admin-key-0123456789')}" in result.output
    assert "my-admin-key" not in result.output


def test_serve_needs_base_and_tenants():
    result = runner.invoke(app, ["serve", "--port", "0"])
    assert result.exit_code == 2
    assert "needs --base and --tenants" in result.output


def test_serve_reports_a_bad_tenants_file_in_one_line(tmp_path, world):
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n  - {name: acme, delta: d, key_sha256: plaintext}\n")
    result = runner.invoke(app, ["serve", "--base", str(world.base_dir), "--tenants", str(path)])
    assert result.exit_code == 2
    assert "error:" in result.output and "sha256 hex digest" in result.output and "Traceback" not in result.output


def test_serve_refuses_a_delta_of_another_base(tmp_path, world):
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump({"tenants": [{"name": "intruder", "delta": str(world.other_base_delta),
                                                 "key_sha256": hash_key("k")}]}))
    result = runner.invoke(app, ["serve", "--base", str(world.base_dir), "--tenants", str(path)])
    assert result.exit_code == 1
    assert "made for base" in result.output and "Traceback" not in result.output


def test_serve_starts_uvicorn_with_the_settings(monkeypatch, world):
    seen = {}

    def fake_run(self, sockets=None):
        seen.update(host=self.config.host, port=self.config.port, app=self.config.app,
                    grace=self.config.timeout_graceful_shutdown)

    monkeypatch.setattr("deltaguard.serve.app.GracefulServer.run", fake_run)
    monkeypatch.setattr("deltaguard.serve.metrics.configure_json_logging", lambda: None)  # keep pytest's logging
    result = runner.invoke(app, ["serve", "--base", str(world.base_dir), "--tenants", str(world.tenants_path),
                                 "--port", "8123", "--set", "max_new_tokens=32"])
    assert result.exit_code == 0, result.output
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    assert seen["grace"] is not None and seen["grace"] <= 5  # open connections cannot hold a shutdown for long
    server = seen["app"].state.server
    assert server.config.max_new_tokens == 32
    assert server.registry.names() == ["alpha", "beta", "delta", "gamma"]
