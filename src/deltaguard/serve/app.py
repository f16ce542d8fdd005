"""The HTTP API (FastAPI): OpenAI-compatible chat completions over many tenants, plus admin and ops endpoints.

* ``POST /v1/chat/completions`` — plain JSON or SSE streaming; ``model`` selects the tenant;
* ``GET /v1/models`` (and ``/v1/models/{id}``) — the tenants the caller's key reaches;
* ``GET|POST /admin/tenants``, ``DELETE /admin/tenants/{name}`` — admin key only; a delta added here
  must lie in ``ServeConfig.admin_delta_root``;
* ``GET /health`` (no key), ``GET /metrics`` (Prometheus text; admin key unless made public).

Keys come as ``Authorization: Bearer <key>``. No key or an unknown key → 401; a valid key asking
for a tenant it does not reach → 404, the same answer as for a tenant that does not exist (no
probing of other tenants' names); the admin key reaches only the admin endpoints and /metrics.
Every error is ``{"error": {"type", "message"}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, AsyncIterator

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from deltaguard.errors import ConfigError, DeltaguardError, IncompatibleBaseError
from deltaguard.serve.completions import chat_completion
from deltaguard.serve.protocol import (
    AddTenantRequest, ApiError, error_body, model_not_found, read_json, require_admin, tenant_caller,
    validation_message,
)
from deltaguard.serve.server import ChatEncodingError, ServeConfig, Server, build_server
from deltaguard.serve.tenants import TenantSpec, hash_key, new_key

log = logging.getLogger("deltaguard.serve.http")
_STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large"}


def create_app(server: Server) -> FastAPI:
    """The FastAPI application for ``server``; the engine thread runs while the app is up."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        server.engine.start()
        try:
            yield
        finally:
            server.engine.stop()

    app = FastAPI(title="deltaguard", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body("invalid_request_error", validation_message(exc)), status_code=400)

    @app.exception_handler(ChatEncodingError)
    async def _chat_encoding_error(_request: Request, exc: ChatEncodingError) -> JSONResponse:
        return JSONResponse(error_body("invalid_request_error", str(exc)), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = _STATUS_TYPES.get(exc.status_code, "invalid_request_error" if exc.status_code < 500 else "server_error")
        return JSONResponse(error_body(kind, str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal_error(_request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error", exc_info=exc)
        return JSONResponse(error_body("server_error", "internal server error"), status_code=500)

    app.add_middleware(AccessLog)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "tenants": len(server.registry.names()), "active_sequences": server.engine.n_active,
                "waiting_requests": server.engine.n_waiting, "kernel": server.mt.kernel}

    @app.get("/metrics")
    async def metrics(request: Request) -> PlainTextResponse:
        if not server.config.is_metrics_public:
            require_admin(server, request)
        return PlainTextResponse(server.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        reachable = tenant_caller(server, request)
        return {"object": "list", "data": [_model_card(name, server) for name in sorted(reachable)]}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        if model_id not in tenant_caller(server, request):
            raise model_not_found(model_id)
        return _model_card(model_id, server)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await chat_completion(server, request)

    @app.get("/admin/tenants")
    async def admin_list(request: Request) -> dict[str, Any]:
        require_admin(server, request)
        return {"tenants": [_tenant_info(server, spec) for spec in server.registry.specs()]}

    @app.post("/admin/tenants", status_code=201)
    async def admin_add(request: Request) -> JSONResponse:
        require_admin(server, request)
        try:
            body = AddTenantRequest.model_validate(await read_json(server, request))
        except ValidationError as exc:
            raise ApiError(400, "invalid_request_error", validation_message(exc)) from None
        if body.name in server.registry:
            raise ApiError(409, "conflict", f"tenant {body.name!r} already exists")
        key = None
        hashes = body.key_sha256
        if hashes is None:
            key = new_key()
            hashes = hash_key(key)
        entry = {"name": body.name, "delta": body.delta, "key_sha256": hashes}
        if body.moderation is not None:
            entry["moderation"] = body.moderation
        try:
            delta_dir = server.admin_delta_path(body.delta)  # checked once; this exact path is what loads
            spec = TenantSpec.from_dict(entry | {"delta": str(delta_dir)}, base_dir=server.admin_delta_root,
                                        where="request")
            spec = dataclasses.replace(spec, delta_dir=delta_dir)
            await asyncio.to_thread(server.add_tenant, spec)
        except IncompatibleBaseError as exc:
            raise ApiError(400, "incompatible_base", str(exc)) from None
        except DeltaguardError as exc:
            raise ApiError(400, "invalid_request_error", str(exc)) from None
        result = _tenant_info(server, spec)
        if key is not None:
            result["api_key"] = key  # shown once; only its hash is kept
        return JSONResponse(result, status_code=201)

    @app.delete("/admin/tenants/{name}")
    async def admin_remove(name: str, request: Request) -> dict[str, Any]:
        require_admin(server, request)
        if name not in server.registry:
            raise ApiError(404, "not_found_error", f"tenant {name!r} does not exist")
        try:
            await asyncio.to_thread(server.remove_tenant, name)
        except DeltaguardError as exc:  # removed meanwhile by a concurrent call
            raise ApiError(404, "not_found_error", str(exc)) from None
        return {"deleted": name}

    return app


class AccessLog:
    """Plain ASGI middleware: one structured log line per HTTP request, after its last byte (streams included)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 0}

        async def send_with_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            log.info("http request", extra={"method": scope.get("method"), "path": scope.get("path"),
                                            "status": status["code"],
                                            "latency_ms": round((time.perf_counter() - started) * 1000, 2)})


def _model_card(name: str, server: Server) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": int(server.metrics.started), "owned_by": "deltaguard"}


def _tenant_info(server: Server, spec: TenantSpec) -> dict[str, Any]:
    footprint = server.mt.footprint(spec.name)
    return {"name": spec.name, "delta": str(spec.delta_dir), "n_keys": len(spec.key_hashes),
            "moderation": spec.moderation.to_dict()["fields"] if spec.moderation else None,
            "delta_bytes": footprint.n_bytes, "encodings": list(footprint.encodings)}


# Seconds uvicorn waits for open connections after a shutdown signal before it cancels them.
SHUTDOWN_GRACE_SECONDS = 3


class GracefulServer(uvicorn.Server):
    """uvicorn's server, except that a shutdown signal first ends every in-flight generation.

    uvicorn's graceful shutdown waits for open responses, and a stream that is still generating would
    hold it for minutes. Telling the engine first fails each waiting and running request with a
    ``shutdown`` event (HTTP 503, or an error event that ends the stream), so the process exits within
    seconds of SIGTERM.
    """

    def __init__(self, config: uvicorn.Config, server: Server) -> None:
        super().__init__(config)
        self.app_server = server

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.app_server.engine.begin_shutdown()
        super().handle_exit(sig, frame)


def serve(base: str | Path, tenants_path: str | Path | None, config: ServeConfig = ServeConfig()) -> None:
    """Run the OpenAI-compatible server until interrupted (SIGINT/SIGTERM end it within seconds)."""
    from deltaguard.serve.metrics import configure_json_logging

    check_bindable(config.host, config.port)  # before the model loads: a busy port fails in a second
    configure_json_logging()
    server = build_server(base, tenants_path, config)
    log.info("serving", extra={"host": config.host, "port": config.port, "tenants": server.registry.names()})
    uvicorn_config = uvicorn.Config(create_app(server), host=config.host, port=config.port, log_config=None,
                                    access_log=False, timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS)
    GracefulServer(uvicorn_config, server).run()


def check_bindable(host: str, port: int) -> None:
    """Raise ConfigError (one line) if ``host`` does not resolve or ``port`` cannot be bound there.

    uvicorn would find out only after the model and every tenant loaded, and then print its own line and
    exit 3; a throwaway bind first turns a busy port or a mistyped host into our usual error.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"serve.host={host!r} does not resolve to an address of this machine ({exc})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (another server on that port? "
                              "choose another --port)") from None
