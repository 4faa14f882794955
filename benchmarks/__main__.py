"""`python -m benchmarks [name ...]`: run benchmarks and update their sections of BENCHMARKS.md.

Each benchmark module has `run() -> str` (a markdown body). Sections of benchmarks not run this
time are kept as they were.
"""

from __future__ import annotations

import importlib
import platform
import re
import sys
import time
from pathlib import Path

import torch

# name -> (section title, "module:function" in benchmarks/ returning the section's markdown)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "store": ("State stores", "bench_store:run"),
    "langgraph": ("Agent store search at size (KVLangGraphStore)", "bench_langgraph_store:run"),
    "kernels": ("FGTB retrieval kernels", "bench_kernels:report"),
    "tempofit": ("TempoFit on SmolLM2", "bench_tempofit:run"),
    "tempofit-gemma3": ("TempoFit on Gemma 3 270M", "bench_tempofit:run_gemma3"),
    "refinement": ("Episodic boundary refinement", "bench_refinement:run"),
    "episodic": ("Episodic memory (EM-LLM) on SmolLM2", "bench_episodic:run"),
    "episodic-gemma3": ("Episodic memory (EM-LLM) on Gemma 3 270M", "bench_episodic:run_gemma3"),
    "advisor": ("Tool-call advisor (TicToc)", "bench_advisor:run"),
    "mcp": ("MCP freshness proxy", "bench_mcp:run"),
    "service": ("Service overhead and load", "bench_service:run"),
    "sessions": ("Sessions per process (session hosts)", "bench_sessions:run"),
    "eval": ("Memory for frozen policies: evaluation on the tasks", "bench_eval:run"),
    "permanence": (
        "Object permanence: a VLA-shaped policy under occlusion",
        "bench_permanence:run",
    ),
    "eval-gemma3": ("Text recall with Gemma 3 270M", "bench_gemma3_text:run"),
}
OUTPUT = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
HEADER = """# Benchmarks

Produced by `make bench` (`python -m benchmarks [name ...]`). Every figure is a ratio of two
things measured side by side in one run, interleaved, as the median of repeats: the machines
are shared and noisy, so absolute times are given for orientation only.
"""


def _section(name: str, title: str, body: str) -> str:
    machine = (
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (
        f"<!-- bench:{name}:start -->\n## {title}\n\n_Run {stamp} on {machine}._\n\n"
        f"{body}\n<!-- bench:{name}:end -->"
    )


def main(argv: list[str]) -> None:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    text = OUTPUT.read_text() if OUTPUT.exists() else HEADER
    for name in names:
        title, target = BENCHMARKS[name]
        module, function = target.split(":")
        print(f"== {name}: {title}", flush=True)
        body = getattr(importlib.import_module(f"benchmarks.{module}"), function)()
        print(body, flush=True)
        section = _section(name, title, body)
        pattern = re.compile(rf"<!-- bench:{name}:start -->.*?<!-- bench:{name}:end -->", re.S)
        text = (
            pattern.sub(lambda _, s=section: s, text)
            if pattern.search(text)
            else (text.rstrip() + "\n\n" + section + "\n")
        )
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main(sys.argv[1:])
