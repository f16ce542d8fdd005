"""The audit's cache key follows the settings the code resolves for each method, defaults included."""

from __future__ import annotations

import deltaguard.audit.config as audit_config
from deltaguard.audit import AuditConfig, audit_path
from deltaguard.audit.run import resolved_methods
from deltaguard.threats import threat_config


def test_a_changed_method_default_is_a_different_audit(monkeypatch, tmp_path):
    config = AuditConfig(methods=("full", "bitdelta", "bitdelta-k2"))
    threat = threat_config("harmful")
    first = audit_path(tmp_path, "base", "ft", threat, config)
    assert audit_path(tmp_path, "base", "ft", threat, config) == first  # stable
    resolved = resolved_methods(config)
    assert set(resolved) == {"bitdelta", "bitdelta-k2"}  # "full" has no settings
    assert resolved["bitdelta"]["fields"]["lr"] == config.method_config("bitdelta").lr
    # a new default for BitDelta's distillation lr, with the config's text unchanged: another audit
    real = audit_config.method_from_spec
    monkeypatch.setattr(audit_config, "method_from_spec",
                        lambda spec, **kw: real(spec, **kw).with_overrides(["lr=3e-5"])
                        if spec.startswith("bitdelta") else real(spec, **kw))
    assert config.to_dict() == AuditConfig(methods=("full", "bitdelta", "bitdelta-k2")).to_dict()
    assert audit_path(tmp_path, "base", "ft", threat, config) != first
