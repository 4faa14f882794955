"""The `tempomem` command line."""

from __future__ import annotations

import importlib.metadata
import shutil

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="tempomem",
    help="Memory middleware with temporal awareness for frozen robot and agent policies.",
    no_args_is_help=True,
    add_completion=False,
)
store_app = typer.Typer(help="Inspect a state store.", no_args_is_help=True)
app.add_typer(store_app, name="store")
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
    from kv_store import RedisStore, StoreUnavailable

    try:
        RedisStore(url).ping()
    except StoreUnavailable as err:
        console.print(f"[red]unavailable[/]: {err}")
        raise typer.Exit(1) from err
    console.print(f"[green]ok[/]: {url}")


@app.command()
def demo() -> None:
    """Run the end-to-end demo (robot episodes with and without memory, an agent scenario)."""
    console.print("nothing to demo yet: the demo lands with the gymnasium/evaluation issue")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
