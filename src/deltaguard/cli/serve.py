"""``deltaguard serve``: the multi-tenant OpenAI-compatible server, and ``serve hash-key`` for tenant keys."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from deltaguard.cli.app import DEVICE_HELP, DeltaguardGroup, app, console, fail_usage

serve_app = typer.Typer(cls=DeltaguardGroup, pretty_exceptions_enable=False, invoke_without_command=True,
                        help="Serve many fine-tunes (compressed deltas) of one base model over an OpenAI-compatible API.")
app.add_typer(serve_app, name="serve")


@serve_app.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    base: str | None = typer.Option(None, "--base", help="base model: embedded name, HF dir, .gguf or hub id"),
    tenants: Path | None = typer.Option(None, "--tenants", help="tenants file (YAML/JSON): name, delta, key_sha256"),
    port: int = typer.Option(8000, "--port", help="TCP port"),
    host: str = typer.Option("127.0.0.1", "--host", help="interface to bind (loopback by default)"),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help="weights and activations: float32 or bfloat16"),
    overrides: list[str] = typer.Option([], "--set", help="server field=value, repeatable (e.g. --set max_new_tokens=256)"),
) -> None:
    """Run the server: ``deltaguard serve --base B --tenants tenants.yaml --port P``."""
    if ctx.invoked_subcommand is not None:
        return
    if base is None or tenants is None:
        fail_usage("deltaguard serve needs --base and --tenants (see 'deltaguard serve --help')")
    from deltaguard.serve import ServeConfig
    from deltaguard.serve import serve as run_server

    from deltaguard.models import resolve_model_dir
    from deltaguard.serve.app import check_bindable
    from deltaguard.serve.tenants import load_tenants_file

    config = ServeConfig(host=host, port=port, device=device, dtype=dtype).with_overrides(overrides)
    load_tenants_file(tenants)              # each input is checked before anything loads or prints
    resolve_model_dir(base)
    check_bindable(config.host, config.port)
    console.print(f"serving {base} on http://{config.host}:{config.port} (tenants from {tenants})", highlight=False)
    run_server(base, tenants, config)


@serve_app.command("hash-key")
def hash_key_command(
    key_stdin: bool = typer.Option(False, "--key-stdin", help="hash your own key (16+ characters) read from stdin"),
    tenant: str | None = typer.Option(None, "--tenant", help="also print a tenants-file entry for this tenant name"),
    delta: Path | None = typer.Option(None, "--delta", help="delta directory for the printed entry"),
    admin: bool = typer.Option(False, "--admin", help="print an admin_key_sha256 line instead of a tenant entry"),
) -> None:
    """Make an API key (or hash yours) and print its sha256 — the only form the tenants file keeps."""
    import yaml

    from deltaguard.serve.tenants import MIN_KEY_LENGTH, TenantSpec, hash_key, new_key

    if tenant is not None and delta is None:
        fail_usage("--tenant needs --delta (the tenant's compressed delta directory)")
    if key_stdin:
        key = sys.stdin.readline().strip()
        if not key:
            fail_usage("--key-stdin read an empty key")
        if len(key) < MIN_KEY_LENGTH:  # a short key can be guessed; the tenants file keeps only its hash
            fail_usage(f"--key-stdin read a key of {len(key)} characters; use at least {MIN_KEY_LENGTH} "
                       f"(or leave out --key-stdin to get a random one)")
        shown = None
    else:
        key = new_key()
        shown = key
    digest = hash_key(key)
    if shown is not None:
        console.print(f"api key (shown once, give it to the tenant): {shown}", highlight=False, soft_wrap=True)
    console.print(f"key_sha256: {digest}", highlight=False, soft_wrap=True)
    if admin:
        console.print(f"\n# tenants file\nadmin_key_sha256: {digest}", highlight=False, soft_wrap=True)
    elif tenant is not None and delta is not None:
        spec = TenantSpec(tenant, delta, (digest,))
        entry = yaml.safe_dump({"tenants": [spec.to_dict()]}, sort_keys=False)
        console.print(f"\n# tenants file entry\n{entry}", highlight=False, soft_wrap=True)
