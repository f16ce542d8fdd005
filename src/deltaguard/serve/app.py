"""The HTTP API (FastAPI): OpenAI-compatible completions over many tenants, plus admin and ops endpoints.

* ``POST /v1/chat/completions`` — plain JSON or SSE streaming; ``model`` selects the tenant, whose own
  chat template (tenants file ``chat_template``) or else the base tokenizer's renders the conversation;
* ``POST /v1/completions`` — legacy text completions: raw prompt(s), no chat template, JSON only;
* ``GET /v1/models`` (and ``/v1/models/{id}``) — the tenants the caller's key reaches;
* ``GET|POST /admin/tenants``, ``DELETE /admin/tenants/{name}`` — admin key only; a delta added here
  must lie in ``ServeConfig.admin_delta_root``;
* ``GET /health`` (no key), ``GET /metrics`` (Prometheus exposition by ``prometheus_client``; admin key
  unless made public).

Keys come as ``Authorization: Bearer <key>``. No key or an unknown key → 401; a valid key asking
for a tenant it does not reach → 404, the same answer as for a tenant that does not exist (no
probing of other tenants' names); the admin key reaches only the admin endpoints and /metrics.
Every error is OpenAI's ``{"error": {"message", "type", "param", "code"}}``, and every response carries
an ``x-request-id`` header: the client's own when it is a sane token (<= 128 characters), else a new one;
the same id is in the request's structured log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, AsyncIterator

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from deltaguard.errors import ConfigError, DeltaguardError, IncompatibleBaseError
from deltaguard.serve.completions import chat_completion, text_completion
from deltaguard.serve.protocol import (
    REQUEST_ID_HEADER, AddTenantRequest, ApiError, choose_request_id, error_body, invalid, model_not_found,
    read_json, require_admin, tenant_caller, validation_error,
)
from deltaguard.serve.server import ChatEncodingError, ServeConfig, Server, build_server
from deltaguard.serve.tenants import TenantSpec, hash_key, new_key

log = logging.getLogger("deltaguard.serve.http")
_STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large"}
_STATUS_CODES = {404: "unknown_url", 405: "method_not_allowed"}


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
        error = validation_error(exc)
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(ChatEncodingError)
    async def _chat_encoding_error(_request: Request, exc: ChatEncodingError) -> JSONResponse:
        return JSONResponse(invalid(str(exc), "messages", "unencodable_content").body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = _STATUS_TYPES.get(exc.status_code, "invalid_request_error" if exc.status_code < 500 else "server_error")
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"unknown URL: {request.method} {request.url.path[:200]}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path[:200]}"
        return JSONResponse(error_body(kind, message, code=_STATUS_CODES.get(exc.status_code)),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    # Anything else that escapes a route becomes a 500 in AccessLog (which also adds the request id).

    app.add_middleware(AccessLog)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "tenants": len(server.registry.names()), "active_sequences": server.engine.n_active,
                "waiting_requests": server.engine.n_waiting, "kernel": server.mt.kernel}

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        if not server.config.is_metrics_public:
            require_admin(server, request)
        return Response(server.metrics.render(), media_type=server.metrics.content_type)

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

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await text_completion(server, request)

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
            raise validation_error(exc) from None
        if body.name in server.registry:
            raise ApiError(409, "conflict", f"tenant {body.name!r} already exists", param="name",
                           code="tenant_exists")
        key = None
        hashes = body.key_sha256
        if hashes is None:
            key = new_key()
            hashes = hash_key(key)
        entry = {"name": body.name, "delta": body.delta, "key_sha256": hashes}
        if body.moderation is not None:
            entry["moderation"] = body.moderation
        if body.chat_template is not None:
            if "{" not in body.chat_template:  # a file name: the admin API takes the template's text only
                raise invalid("chat_template must be the Jinja text of the template, not a path", "chat_template")
            entry["chat_template"] = body.chat_template
        try:
            delta_dir = server.admin_delta_path(body.delta)  # checked once; this exact path is what loads
            spec = TenantSpec.from_dict(entry | {"delta": str(delta_dir)}, base_dir=server.admin_delta_root,
                                        where="request")
            spec = dataclasses.replace(spec, delta_dir=delta_dir)
            await asyncio.to_thread(server.add_tenant, spec)
        except IncompatibleBaseError as exc:
            raise ApiError(400, "incompatible_base", str(exc), param="delta", code="incompatible_base") from None
        except DeltaguardError as exc:
            raise invalid(str(exc), _admin_param(str(exc))) from None
        result = _tenant_info(server, spec)
        if key is not None:
            result["api_key"] = key  # shown once; only its hash is kept
        return JSONResponse(result, status_code=201)

    @app.delete("/admin/tenants/{name}")
    async def admin_remove(name: str, request: Request) -> dict[str, Any]:
        require_admin(server, request)
        if name not in server.registry:
            raise ApiError(404, "not_found_error", f"tenant {name!r} does not exist", param="name",
                           code="tenant_not_found")
        try:
            await asyncio.to_thread(server.remove_tenant, name)
        except DeltaguardError as exc:  # removed meanwhile by a concurrent call
            raise ApiError(404, "not_found_error", str(exc), param="name", code="tenant_not_found") from None
        return {"deleted": name}

    return app


def _admin_param(message: str) -> str | None:
    for field in ("chat_template", "moderation", "key_sha256", "delta"):
        if field in message:
            return field
    return "name" if "tenant name" in message else None


_INTERNAL_ERROR = json.dumps(error_body("server_error", "internal server error", code="internal_error")).encode()


class AccessLog:
    """Plain ASGI middleware: the request id (``x-request-id``) on every response, a JSON 500 for anything a
    route lets escape, and one structured log line per HTTP request after its last byte (streams included)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        sent = next((value.decode("latin-1") for name, value in scope.get("headers", ())
                     if name.lower() == REQUEST_ID_HEADER.encode()), None)
        request_id = choose_request_id(sent)
        scope.setdefault("state", {})["request_id"] = request_id
        status = {"code": 0}

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != REQUEST_ID_HEADER.encode()]
                message = {**message, "headers": [*headers, (REQUEST_ID_HEADER.encode(), request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            log.error("internal error", exc_info=exc, extra={"request_id": request_id})
            if status["code"]:  # the response had begun: nothing more can be said to this client
                raise
            await send_with_id({"type": "http.response.start", "status": 500,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(_INTERNAL_ERROR)).encode())]})
            await send_with_id({"type": "http.response.body", "body": _INTERNAL_ERROR})
        finally:
            log.info("http request", extra={"request_id": request_id, "method": scope.get("method"),
                                            "path": scope.get("path"), "status": status["code"],
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
