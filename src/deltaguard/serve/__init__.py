"""Multi-tenant serving: many fine-tunes from one base model, each kept as a compressed delta.

``serve(base, tenants_path, ServeConfig(...))`` runs an OpenAI-compatible HTTP server (FastAPI +
uvicorn); ``build_server`` + ``create_app`` give the same pieces for embedding or tests. Inside:
``MultiTenantModel`` (layers.py) computes every batch row with its own tenant's delta over one
shared base, ``Engine`` (engine.py) batches requests of all tenants continuously, ``TenantRegistry``
(tenants.py) holds hashed keys and policies, ``Moderator`` (moderation.py) screens with a judge.
"""

from deltaguard.serve.engine import Engine, EngineConfig
from deltaguard.serve.layers import MultiTenantDense, MultiTenantLinear, MultiTenantModel, TenantFootprint
from deltaguard.serve.moderation import Decision, ModerationConfig, Moderator, ModeratorPool
from deltaguard.serve.requests import (
    Completion, EngineBusyError, EngineClosedError, Event, RequestHandle, SamplingParams,
)
from deltaguard.serve.server import ServeConfig, Server, build_server
from deltaguard.serve.tenants import (
    TenantRegistry, TenantSpec, TenantsFile, hash_key, load_tenant_delta, load_tenants_file, new_key,
    write_tenants_file,
)


def create_app(server: Server):
    """The FastAPI app for ``server`` (imported lazily: FastAPI is only needed to serve HTTP)."""
    from deltaguard.serve.app import create_app as _create_app

    return _create_app(server)


def serve(base, tenants_path, config: ServeConfig = ServeConfig()) -> None:
    """Run the HTTP server until SIGINT/SIGTERM (``serve.app.serve``; FastAPI and uvicorn load only here)."""
    from deltaguard.serve.app import serve as _serve

    _serve(base, tenants_path, config)


__all__ = [
    "Completion", "Decision", "Engine", "EngineBusyError", "EngineClosedError", "EngineConfig", "Event", "ModerationConfig", "Moderator", "ModeratorPool",
    "MultiTenantDense", "MultiTenantLinear", "MultiTenantModel", "RequestHandle", "SamplingParams", "ServeConfig",
    "Server", "TenantFootprint", "TenantRegistry", "TenantSpec", "TenantsFile", "build_server", "create_app",
    "hash_key", "load_tenant_delta", "load_tenants_file", "new_key", "serve", "write_tenants_file",
]
