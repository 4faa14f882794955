"""`tempomem mcp serve` and `tempomem mcp proxy`: the command line of the MCP servers.

On stdio, stdout is the MCP channel: everything these commands print goes to stderr.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from services.cli_help import plain_help_typer

mcp_app = plain_help_typer(
    help="MCP servers: tempomem's memory as tools, and a freshness-aware proxy.",
    no_args_is_help=True,
)
err = Console(stderr=True, soft_wrap=True, highlight=False)

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--redis",
        help="Redis URL of the store (redis://HOST:PORT/DB). Default: in-process, lost on exit.",
    ),
]
NamespaceOption = Annotated[
    str, typer.Option(help="Store namespace (on stdio; over HTTP the token's).")
]
ClockOption = Annotated[
    str,
    typer.Option(
        help="'system', or 'sim' for tests: time moves only when a client calls the "
        "tempomem_advance_clock tool."
    ),
]


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error[/]: {escape(message)}")
    return typer.Exit(2)


def _require_mcp() -> None:
    try:
        import mcp  # noqa: F401
    except ImportError:
        raise _fail("the MCP commands need the mcp package: pip install 'tempomem[mcp]'") from None


def parse_host_port(value: str) -> tuple[str, int]:
    """'HOST:PORT' (an IPv6 host in brackets) as (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--http {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8765")
    return host.strip("[]"), int(port)


def _quiet_logs() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")


@mcp_app.command("serve")
def serve(
    http: Annotated[
        str | None,
        typer.Option(help="Serve streamable HTTP on HOST:PORT (at /mcp) instead of stdio."),
    ] = None,
    redis: StoreOption = None,
    namespace: NamespaceOption = "default",
    token: Annotated[
        list[str] | None,
        typer.Option(
            help="With --http: bearer token, as TOKEN (namespace 'default') or "
            "NAMESPACE:TOKEN; repeat for several tenants. None: no auth, namespace from the "
            "X-Tempomem-Namespace header."
        ),
    ] = None,
    clock: ClockOption = "system",
    search: Annotated[
        str,
        typer.Option(help="search_memory similarity: 'auto' (MiniLM if installed) or 'lexical'."),
    ] = "auto",
) -> None:
    """Serve the agent memory and the tool-call advisor as MCP tools.

    Tools: record_event, search_memory, time_since, advise_tool_call, now."""
    _require_mcp()
    from kv_store.urls import redact_url
    from services.cli import parse_tokens
    from services.mcp_clock import make_clock
    from services.mcp_server import EventLogs, build_memory_server, namespace_rule, serve_memory
    from services.session import StoreSpec

    try:
        if search not in ("auto", "lexical"):
            raise ValueError(f"--search must be 'auto' or 'lexical', got {search!r}")
        if token and http is None:
            raise ValueError("--token needs --http (stdio has no bearer tokens)")
        address = None if http is None else parse_host_port(http)
        tokens = parse_tokens(token or [])
        spec = StoreSpec(url=redis or "local")
        logs = EventLogs(
            spec, make_clock(clock), search="lexical" if search == "lexical" else "auto"
        )
        logs.stores.get(namespace)  # a bad namespace fails here, before serving
        server = build_memory_server(logs, namespace_rule(tokens, namespace), clock == "sim")
    except ValueError as error:
        raise _fail(str(error)) from None
    _quiet_logs()
    where = "stdio" if address is None else f"http://{address[0]}:{address[1]}/mcp"
    auth = "" if address is None else f", auth {'on' if tokens else 'off'}"
    err.print(f"tempomem mcp serve on {where} (store {redact_url(spec.url)}{auth})")
    if address is not None and address[0] not in ("127.0.0.1", "localhost", "::1") and not tokens:
        err.print(f"[yellow]warning[/]: binding {address[0]} without --token: anyone can connect")
    serve_memory(server, address, tokens)


@mcp_app.command(
    "proxy",
    context_settings={"allow_extra_args": True},
    options_metavar="[OPTIONS] -- UPSTREAM_COMMAND [ARGS]...",
)
def proxy(
    ctx: typer.Context,
    horizon: Annotated[
        list[str] | None,
        typer.Option(
            help="TOOL=SECONDS: how long TOOL's results are served from cache (0: never). "
            "Repeat per tool. Default: the horizon the result declares, else the advisor's."
        ),
    ] = None,
    upstream_url: Annotated[
        str | None,
        typer.Option(
            help="A streamable-HTTP upstream instead of a command; a bearer token for it is "
            "read from TEMPOMEM_UPSTREAM_TOKEN."
        ),
    ] = None,
    stamp: Annotated[
        bool, typer.Option(help="Prefix text results with an 'observed N ago' line.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the upstream per request.")
    ] = 30.0,
    redis: StoreOption = None,
    namespace: NamespaceOption = "default",
    session: Annotated[str, typer.Option(help="Session id of the event log.")] = "default",
    clock: ClockOption = "system",
) -> None:
    """Serve another MCP server's tools with freshness: cached repeats, result ages.

    Every result carries _meta["tempomem/freshness"]; a repeated call of a read-only tool
    with the same arguments is answered from cache while within its horizon.
    Example: tempomem mcp proxy --horizon get_weather=600 -- npx -y some-weather-mcp"""
    _require_mcp()
    from kv_store.urls import redact_url
    from memory.temporal import ToolCallAdvisor
    from services.agent_log import check_session_id
    from services.mcp_clock import make_clock
    from services.mcp_freshness import FreshnessCache, parse_horizons
    from services.mcp_proxy import UpstreamSpec, run_proxy
    from services.session import StoreSpec

    try:
        spec = UpstreamSpec(command=tuple(ctx.args), url=upstream_url)
        check_session_id(session)
        if not timeout > 0:
            raise ValueError(f"--timeout must be > 0 seconds, got {timeout!r}")
        sim_clock = make_clock(clock)
        cache = FreshnessCache(sim_clock, parse_horizons(horizon or []), ToolCallAdvisor())
        store_spec = StoreSpec(url=redis or "local")
        store = store_spec.build(namespace)
    except ValueError as error:
        raise _fail(str(error)) from None
    _quiet_logs()
    err.print(
        f"tempomem mcp proxy: upstream {spec.describe()!r}, store {redact_url(store_spec.url)}, "
        f"namespace {namespace!r}, session {session!r}"
    )
    run_proxy(spec, cache, store, session, timeout_s=timeout, stamp=stamp, sim_tool=clock == "sim")
