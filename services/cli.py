"""The `tempomem` command line."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from services.cli_help import plain_help_typer
from services.mcp_cli import mcp_app

if TYPE_CHECKING:
    from services.host_stream import DirectStreamSpec

app = plain_help_typer(
    name="tempomem",
    help="Memory middleware with temporal awareness for frozen robot and agent policies.",
    no_args_is_help=True,
    add_completion=False,
)
store_app = plain_help_typer(help="Inspect a state store.", no_args_is_help=True)
app.add_typer(store_app, name="store")
eval_app = plain_help_typer(
    help="Evaluate memory components on labelled data.", no_args_is_help=True
)
app.add_typer(eval_app, name="eval")
plot_app = plain_help_typer(
    help="Plots a person would rather look at than read.", no_args_is_help=True
)
app.add_typer(plot_app, name="plot")
app.add_typer(mcp_app, name="mcp")
console = Console()


@app.command()
def version() -> None:
    """Print the tempomem version."""
    console.print(importlib.metadata.version("tempomem"))


@app.command()
def doctor() -> None:
    """Check what this machine has: torch, triton, a GPU, redis-server, transformers."""
    table = Table("component", "status")
    for dist in ("torch", "triton", "transformers", "ray", "redis", "gymnasium"):
        try:
            table.add_row(dist, importlib.metadata.version(dist))
        except importlib.metadata.PackageNotFoundError:
            table.add_row(dist, "[yellow]not installed[/]")
    try:
        import torch

        table.add_row("CUDA", "available" if torch.cuda.is_available() else "no (CPU paths)")
    except ImportError:
        table.add_row("CUDA", "[yellow]torch missing[/]")
    binary = shutil.which("redis-server")
    table.add_row(
        "redis-server", binary or "[yellow]not found (apt-get install -y redis-server)[/]"
    )
    console.print(table)


@store_app.command("ping")
def store_ping(url: str = typer.Option("redis://127.0.0.1:6379/0", help="Redis URL.")) -> None:
    """Check that a Redis store answers."""
    from kv_store import RedisStore, StoreUnavailable, redact_url

    try:
        RedisStore(url).ping()
    except (StoreUnavailable, ValueError) as err:
        console.print(f"[red]unavailable[/]: {escape(str(err))}")
        raise typer.Exit(1) from err
    console.print(f"[green]ok[/]: {redact_url(url)}")


@eval_app.command("toolcalls")
def eval_toolcalls(
    file: Annotated[Path, typer.Argument(help="JSONL of labelled tool-call trajectories.")],
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the results here (JSON).")
    ] = None,
    ttl_minutes: Annotated[
        float, typer.Option(help="TTL of the fixed-TTL baseline, in minutes.")
    ] = 30.0,
) -> None:
    """Normalised alignment rate of the ToolCallAdvisor vs always-call, never-call, fixed TTL."""
    from memory.temporal import (
        ToolCallAdvisor,
        always_call,
        evaluate,
        fixed_ttl,
        load_trajectories,
        never_call,
    )
    from memory.temporal.evaluation import DecideFn

    if not file.is_file():
        console.print(f"[red]error[/]: {file} is not a file")
        raise typer.Exit(2)
    if not ttl_minutes > 0:
        console.print(f"[red]error[/]: --ttl-minutes must be > 0, got {ttl_minutes}")
        raise typer.Exit(2)
    try:
        trajectories = load_trajectories(file)
    except (ValueError, UnicodeDecodeError) as err:
        console.print(f"[red]error[/]: {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from err
    if not trajectories:
        console.print(f"[red]error[/]: {file} holds no trajectories")
        raise typer.Exit(2)
    advisor = ToolCallAdvisor()
    ttl_name = f"ttl-{ttl_minutes:g}min"
    methods: dict[str, DecideFn] = {
        "advisor": lambda messages, tools: advisor.decide(messages, tools),
        "always-call": always_call,
        "never-call": never_call,
        ttl_name: fixed_ttl(ttl_minutes * 60.0),
    }
    try:
        reports = {name: evaluate(trajectories, fn) for name, fn in methods.items()}
    except ValueError as err:
        console.print(f"[red]error[/]: {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from err
    names = list(reports)
    summary = Table("method", "alignment rate", "accuracy", title=f"{len(trajectories)} decisions")
    for name, report in reports.items():
        c = report.confusion
        summary.add_row(name, f"{c.alignment_rate:.3f}", f"{c.accuracy:.3f}")
    console.print(summary)
    confusion = Table(
        "method", "call/call", "call/answer", "answer/call", "answer/answer",
        title="confusion (preferred/decided)",
    )  # fmt: skip
    for name, report in reports.items():
        c = report.confusion
        confusion.add_row(
            name, str(c.true_call), str(c.false_answer), str(c.false_call), str(c.true_answer)
        )
    console.print(confusion)
    first = reports[names[0]]
    breakdown = Table("group", "n", *names, title="alignment rate per sensitivity and domain")
    groups = [("sensitivity: " + s, "per_sensitivity", s) for s in ("high", "medium", "low")]
    groups += [(d, "per_domain", d) for d in sorted(first.per_domain)]
    for label, attr, key in groups:
        if key not in getattr(first, attr):
            continue
        cells = [f"{getattr(r, attr)[key].alignment_rate:.3f}" for r in reports.values()]
        breakdown.add_row(label, str(getattr(first, attr)[key].total), *cells)
    console.print(breakdown)
    if json_out is not None:
        result = {
            "file": str(file),
            "n": len(trajectories),
            "methods": {name: _report_json(report) for name, report in reports.items()},
        }
        json_out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        console.print(f"wrote {json_out}")


def _confusion_json(confusion: Any) -> dict[str, Any]:
    return {
        "alignment_rate": confusion.alignment_rate,
        "accuracy": confusion.accuracy,
        "n": confusion.total,
        "true_call": confusion.true_call,
        "false_call": confusion.false_call,
        "true_answer": confusion.true_answer,
        "false_answer": confusion.false_answer,
    }


def _report_json(report: Any) -> dict[str, Any]:
    return {
        **_confusion_json(report.confusion),
        "per_domain": {k: _confusion_json(v) for k, v in sorted(report.per_domain.items())},
        "per_sensitivity": {
            k: _confusion_json(v) for k, v in sorted(report.per_sensitivity.items())
        },
        "misses": list(report.misses),
    }


@eval_app.command("robot")
def eval_robot(
    env: Annotated[
        str | None,
        typer.Option(help="Gymnasium id (default: the policy task, e.g. tempomem/TextRecall-v0)."),
    ] = None,
    policy: Annotated[
        str, typer.Option(help="smollm2 or gemma3 (text tasks), tmaze-tiny or permanence-vla.")
    ] = "smollm2",
    memory: Annotated[
        list[str] | None,
        typer.Option(help="none, tempofit, episodic, stacking; repeat (default: all four)."),
    ] = None,
    episodes: Annotated[int, typer.Option(help="Episodes per memory kind (same seeds).")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the first episode.")] = 0,
    env_arg: Annotated[
        list[str] | None,
        typer.Option(help="Env constructor argument KEY=VALUE (JSON value), repeatable."),
    ] = None,
    capacity: Annotated[int, typer.Option(help="TempoFit frames (FIFO capacity).")] = 8,
    beta: Annotated[
        float | None,
        typer.Option(help="TempoFit's Frame-Gap Temporal Bias strength (default: the config's)."),
    ] = None,
    stack: Annotated[int, typer.Option(help="Frames stacked before the current one.")] = 4,
    out: Annotated[Path, typer.Option(help="Folder for report.json and the plots.")] = Path(
        "out/eval"
    ),
) -> None:
    """Run a frozen policy through a task with and without memory; JSON + plots to --out."""
    from envs.memory_runners import MEMORY_KINDS
    from envs.policy_zoo import POLICIES, runner_options
    from services.robot_eval import parse_env_args, run_robot_eval

    memories = list(memory or MEMORY_KINDS)
    try:
        if policy not in POLICIES:
            raise ValueError(f"--policy must be one of {sorted(POLICIES)}, got {policy!r}")
        env_kwargs = parse_env_args(env_arg or [])
        options = runner_options(policy, capacity=capacity, stack=stack, beta=beta)
        run_robot_eval(
            env or POLICIES[policy].default_env,
            policy,
            memories,
            episodes=episodes,
            seed=seed,
            env_kwargs=env_kwargs,
            runner_options=options,
            out_dir=out,
            console=console,
        )
    except (ValueError, TypeError) as err:
        console.print(f"[red]error[/]: {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from err
    console.print(f"wrote {out}/report.json and plots")


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Interface to bind; 127.0.0.1 unless you mean to expose it.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    model: Annotated[str, typer.Option(help="tiny-llama (random, for trying) or smollm2.")] = (
        "tiny-llama"
    ),
    store: Annotated[
        str,
        typer.Option(
            help="'embedded' (a private redis-server started here; 'local' if none is "
            "installed), 'local' (in-process, lost on actor restarts), a redis:// URL or a "
            "redis+cluster:// URL (a Redis Cluster, through any of its nodes)."
        ),
    ] = "embedded",
    token: Annotated[
        list[str] | None,
        typer.Option(
            help="Bearer token, as TOKEN (namespace 'default') or NAMESPACE:TOKEN; repeat for "
            "several tenants. None: no auth, namespace from the X-Tempomem-Namespace header."
        ),
    ] = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs for the local Ray.")] = None,
    max_batch_size: Annotated[int, typer.Option(help="Most sessions per forward.")] = 8,
    replicas: Annotated[int, typer.Option(help="Policy deployment replicas.")] = 1,
    placement: Annotated[
        str,
        typer.Option(
            help="'shared': one batched policy deployment steps every session; 'session': "
            "each session host runs one copy of the model for its sessions (one hop, no state "
            "transfer)."
        ),
    ] = "shared",
    max_sessions_per_tenant: Annotated[
        int, typer.Option(help="Most robot sessions per tenant; more answer HTTP 429.")
    ] = 1000,
    session_hosts: Annotated[
        int, typer.Option(help="Session host actors; each holds many sessions' memory.")
    ] = 2,
    idle_evict_s: Annotated[
        float, typer.Option(help="Seconds unused before a session leaves memory for the store.")
    ] = 600.0,
    direct_stream: Annotated[
        str | None,
        typer.Option(
            help="Interface on which each session host takes its robots' streams itself "
            "(127.0.0.1 here; 0.0.0.0 on a cluster whose robots reach the nodes): after the "
            "stream route checks the token, steps skip the HTTP proxy and the ingress. Plain "
            "ws:// (a wss:// client stays on the route) unless --direct-stream-cert is given. "
            "None: off."
        ),
    ] = None,
    direct_stream_cert: Annotated[
        Path | None,
        typer.Option(
            help="With --direct-stream: a PEM certificate for the hosts' addresses (readable on "
            "every node), so their streams are wss:// and wss:// clients move to them too."
        ),
    ] = None,
    direct_stream_key: Annotated[
        Path | None, typer.Option(help="The private key (PEM) of --direct-stream-cert.")
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            help="HEAD:PORT of a running Ray cluster (`ray start --head`) to serve from, "
            "instead of a local Ray; its token auth is the cluster's own. Needs a --store "
            "redis:// URL that every node reaches."
        ),
    ] = None,
) -> None:
    """Serve the HTTP API: Ray Serve with the policy and session hosts.

    On a local Ray by default; with --address, on a running Ray cluster.
    """
    from services.deployment import ServeSettings
    from services.http_app import HttpSettings
    from services.policy_worker import MODEL_NAMES, WorkerSpec
    from services.ray_security import RayAuthDisabled, require_token_auth
    from services.serve_process import check_cluster_options, run_server
    from services.session import StoreSpec

    if model not in MODEL_NAMES:
        console.print(f"[red]error[/]: --model must be one of {', '.join(MODEL_NAMES)}")
        raise typer.Exit(2)
    try:
        check_cluster_options(address, store, num_cpus)
        tokens = parse_tokens(token or [])
        settings = ServeSettings(
            worker=WorkerSpec.model_validate({"model": model, "placement": placement}),
            http=HttpSettings(tokens=tokens),
            max_batch_size=max_batch_size,
            policy_replicas=replicas,
            max_sessions_per_tenant=max_sessions_per_tenant,
            session_hosts=session_hosts,
            idle_evict_s=idle_evict_s,
            store=StoreSpec(url="local" if store == "embedded" else store),
            direct_stream=direct_stream_spec(direct_stream, direct_stream_cert, direct_stream_key),
        )
        # Ray's ports listen on every interface whatever --host says; its token auth closes them.
        require_token_auth()
    except (ValueError, RayAuthDisabled) as err:
        console.print(f"[red]error[/]: {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from err
    run_server(
        settings,
        host=host,
        port=port,
        embedded=store == "embedded",
        num_cpus=num_cpus,
        address=address,
    )


def direct_stream_spec(
    bind: str | None, cert: Path | None, key: Path | None
) -> DirectStreamSpec | None:
    """The hosts' direct streams of ``serve``'s options (ValueError for TLS files without
    ``--direct-stream``, or a certificate without its key)."""
    from services.host_stream import DirectStreamSpec as Spec

    if bind is None:
        if cert is not None or key is not None:
            raise ValueError("--direct-stream-cert/--direct-stream-key need --direct-stream")
        return None
    return Spec(
        bind=bind,
        certfile=None if cert is None else str(cert),
        keyfile=None if key is None else str(key),
    )


def parse_tokens(values: list[str]) -> dict[str, str]:
    """``TOKEN`` or ``NAMESPACE:TOKEN`` options as a token -> namespace map.

    The token is everything after the first ``:``; the checks of ``HttpSettings`` (length,
    characters) apply to it. Errors name the option by position, never by its value, which is
    a secret (or holds one).
    """
    from services.http_app import check_token
    from services.schemas import NAME_PATTERN

    tokens: dict[str, str] = {}
    for number, value in enumerate(values, start=1):
        where = f"--token #{number}"
        namespace, sep, secret = value.partition(":")
        if not sep:
            namespace, secret = "default", value
        if not re.fullmatch(NAME_PATTERN, namespace):
            raise ValueError(
                f"{where}: the namespace before ':' must match {NAME_PATTERN} "
                "(the value is not shown: it may be a secret)"
            )
        check_token(secret, where)
        if secret in tokens:
            raise ValueError(
                f"{where}: the same token is given twice (here and for namespace "
                f"{tokens[secret]!r}); each tenant needs a token of its own"
            )
        tokens[secret] = namespace
    return tokens


@app.command()
def status(
    url: Annotated[str, typer.Option(help="Base URL of `tempomem serve`.")] = (
        "http://127.0.0.1:8000"
    ),
    token: Annotated[str | None, typer.Option(help="Bearer token (for /metrics).")] = None,
) -> None:
    """Health and a metrics summary of a running `tempomem serve`."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base = url.rstrip("/")
    try:
        health = httpx.get(base + "/healthz", timeout=10).json()
        info = httpx.get(base + "/v1/info", headers=headers, timeout=10)
        metrics = httpx.get(base + "/metrics", headers=headers, timeout=10)
    except (httpx.HTTPError, ValueError) as err:
        console.print(f"[red]unreachable[/]: {url}: {escape(str(err))}")
        raise typer.Exit(1) from err
    table = Table("field", "value", title=f"tempomem at {url}")
    table.add_row("status", str(health.get("status")))
    if info.status_code == 200:
        for key, value in info.json().items():
            table.add_row(key, f"{value:.0f}" if isinstance(value, float) else str(value))
    else:
        table.add_row("info", f"[yellow]HTTP {info.status_code}[/] (--token?)")
    if metrics.status_code == 200:
        for name, value in summarize_metrics(metrics.text).items():
            table.add_row(name, value)
    else:
        table.add_row("metrics", f"[yellow]HTTP {metrics.status_code}[/] (--token?)")
    console.print(table)


def summarize_metrics(text: str) -> dict[str, str]:
    """Steps, degraded steps, replays and step latency (mean, p50/p99 bucket bounds)."""
    values: dict[str, float] = {}
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith("tempomem_step_latency_seconds_bucket"):
            bound = name.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if bound == "+Inf" else float(bound), float(value)))
        elif "{" not in name:
            values[name] = float(value)
    out = {
        "steps": f"{values.get('tempomem_steps_total', 0):.0f}",
        "degraded steps": f"{values.get('tempomem_degraded_steps_total', 0):.0f}",
        "replayed steps": f"{values.get('tempomem_replayed_steps_total', 0):.0f}",
    }
    count = values.get("tempomem_step_latency_seconds_count", 0)
    if count:
        out["step latency mean"] = (
            f"{values['tempomem_step_latency_seconds_sum'] / count * 1e3:.1f} ms"
        )
        finite = [b for b, _ in sorted(buckets) if b != float("inf")]
        for q in (0.5, 0.99):
            upper = next((b for b, c in sorted(buckets) if c >= q * count), float("inf"))
            bound = (
                f"<= {upper * 1e3:g} ms"
                if upper != float("inf")
                else (f"> {finite[-1] * 1e3:g} ms" if finite else "unknown")
            )
            out[f"step latency p{int(q * 100)}"] = bound
    return out


@app.command()
def demo(
    episodes: Annotated[
        int, typer.Option(help="Episodes per configuration of the robot tasks.")
    ] = 40,
    text_episodes: Annotated[
        int, typer.Option(help="Episodes per memory of the secondary text-recall row.")
    ] = 12,
    delay: Annotated[
        int, typer.Option(help="Steps the target stays covered (and text distractor steps).")
    ] = 3,
    out: Annotated[Path, typer.Option(help="Folder for demo.json and the plots.")] = Path("out"),
    seed: Annotated[int, typer.Option(help="Seed of the first episode.")] = 0,
) -> None:
    """Run the end-to-end demo (robot episodes with and without memory, an agent scenario)."""
    from services.demo import DemoSettings, run_demo

    for flag, value in (("--episodes", episodes), ("--text-episodes", text_episodes)):
        if not 1 <= value <= 1000:
            console.print(f"[red]error[/]: {flag} must be in [1, 1000], got {value}")
            raise typer.Exit(2)
    if not 0 <= delay <= 64:
        console.print(f"[red]error[/]: --delay must be in [0, 64], got {delay}")
        raise typer.Exit(2)
    settings = DemoSettings(
        episodes=episodes, text_episodes=text_episodes, delay=delay, out=out, seed=seed
    )
    run_demo(settings, console)


def main() -> None:  # pragma: no cover - console entry
    app()


@plot_app.command("events")
def plot_events_command(
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("out/events.png"),
    model: Annotated[
        str, typer.Option(help="smollm2, or tiny-llama (random weights: a quick look only).")
    ] = "smollm2",
    repeats: Annotated[
        int, typer.Option(help="Filler sentences around the pass key (~24 tokens each).")
    ] = 60,
    depth: Annotated[float, typer.Option(help="Where the pass key sits, 0..1.")] = 0.3,
    n_local: Annotated[int, typer.Option(help="Local attention window (tokens).")] = 256,
    chunk_size: Annotated[int, typer.Option(help="Prefill chunk (tokens).")] = 128,
    new_tokens: Annotated[int, typer.Option(help="Tokens to generate after the prompt.")] = 8,
) -> None:
    """Plot episodic memory on a pass-key prompt.

    Draws the surprise curve, the event boundaries before and after refinement, and which
    events were retrieved for the last query.
    """
    import torch

    from envs.tasks.passkey import passkey_prompt
    from memory import EpisodicConfig
    from policies import EpisodicLM, load_smollm2, tiny_random_model
    from policies.episodic_plot import plot_events

    max_event = min(128, n_local)
    config = EpisodicConfig(
        n_init=max(4, n_local // 8),
        n_local=n_local,
        budget=2 * n_local,
        chunk_size=chunk_size,
        surprise_window=min(128, n_local),
        max_event_size=max_event,
        min_event_size=max(1, min(8, max_event // 4)),
    )
    tokenizer: Any = None
    if model == "smollm2":
        lm_model, tokenizer = load_smollm2()
        prompt = passkey_prompt(71432, repeats=repeats, depth=depth)
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids
    elif model == "tiny-llama":
        lm_model = tiny_random_model("llama", seed=0)
        vocab = lm_model.config.vocab_size
        input_ids = torch.randint(
            0, vocab, (1, 24 * repeats), generator=torch.Generator().manual_seed(0)
        )
    else:
        raise typer.BadParameter("choose smollm2 or tiny-llama", param_hint="--model")
    lm = EpisodicLM(lm_model, config)
    try:
        output = lm.generate(input_ids, max_new_tokens=new_tokens)
        out.parent.mkdir(parents=True, exist_ok=True)
        path = plot_events(lm, out, title=f"{model}: {input_ids.shape[1]} tokens, window {n_local}")
    finally:
        lm.remove()
    answer = output[0, input_ids.shape[1] :].tolist()
    shown = tokenizer.decode(answer) if tokenizer is not None else str(answer)
    console.print(f"generated: {escape(shown)!r}")
    console.print(f"events: {len(lm.events())}; plot written to {path}")


if __name__ == "__main__":  # pragma: no cover
    main()
