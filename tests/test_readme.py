"""Every ```python and ```bash block of README.md runs here as written, or is marked a fragment.

Directives: an HTML comment on the line right before a fence.

    <!-- fragment: one-line reason -->      not run (the reason is required)
    <!-- readme-test: ITEM, ITEM, ... -->   optional; how a runnable block runs

ITEMs (a block without a directive runs with the defaults):

    slow          needs the real SmolLM2 model or the service: the test is marked slow
    id=NAME       names the block: the test id, and the name of its extra setup/assertions
                  in CHECKS below (if any)
    background    (bash) a server that runs until stopped; not a test of its own: it runs
                  around the blocks that name it with after=; needs an id with a starter
                  in SERVERS below
    after=NAME    runs while the background block NAME is up
    timeout=SECS  limit of the block's own run (default DEFAULT_TIMEOUT_S)

```text blocks are output excerpts and are not run; any other fence language (or none) fails
the suite, as does a directive that is not directly before a fence.

Each block runs in a fresh subprocess (python blocks with this interpreter, bash blocks with
`bash -eu` so that every line's exit code counts) in its own tmp directory, with the venv's
bin/ first on PATH, REDIS_URL pointing at the session's private redis-server (when the code
mentions REDIS_URL) and RAY_ADDRESS=local (a private Ray, never someone's cluster). Each runs
in its own process session, and whatever is left of that session when the block ends is
killed. Real redis-server, real Ray, real model: nothing is mocked except the OpenAI API,
which the agent block reaches over HTTP at a local scripted stand-in.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DEFAULT_TIMEOUT_S = 420.0
RUN_LANGUAGES = ("python", "bash")
LANGUAGES = (*RUN_LANGUAGES, "text")
FLAGS = ("slow", "background")
KEYS = ("id", "after", "timeout")
SERVE_URL = "http://127.0.0.1:8000"  # `tempomem serve` defaults, as the README uses it
SERVE_READY_TIMEOUT_S = 240.0
STOP_GRACE_S = 60.0

FENCE = re.compile(r"^```(.*)$")
DIRECTIVE = re.compile(r"^<!--\s*(fragment|readme-test):(.*?)-->\s*$")
NAME = re.compile(r"^[A-Za-z0-9_-]+$")


# ------------------------------------------------------------------------------- the parser


@dataclass(frozen=True)
class Block:
    """One fenced block: ``line`` is the 1-based line of its opening fence; ``section`` a slug
    of the heading it is under (``time``, ``state-stores-2`` for a second block there)."""

    line: int
    lang: str
    code: str
    fragment: str | None = None
    flags: frozenset[str] = frozenset()
    options: dict[str, str] = field(default_factory=dict)
    section: str = ""

    @property
    def name(self) -> str:
        return self.options.get("id") or self.section or f"line{self.line}"

    @property
    def timeout_s(self) -> float:
        return float(self.options.get("timeout", DEFAULT_TIMEOUT_S))

    @property
    def runnable(self) -> bool:
        return self.lang in RUN_LANGUAGES and self.fragment is None


def parse_directive(text: str, line: int) -> tuple[frozenset[str], dict[str, str]]:
    flags: set[str] = set()
    options: dict[str, str] = {}
    for raw in text.split(","):
        item = raw.strip()
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep and key in FLAGS:
            flags.add(key)
        elif sep and key in KEYS and value:
            if key in ("id", "after") and not NAME.match(value):
                raise ValueError(f"README.md:{line}: {key}={value!r} is not a plain name")
            if key == "timeout" and not re.fullmatch(r"\d+(\.\d+)?", value):
                raise ValueError(f"README.md:{line}: timeout={value!r} is not a number")
            options[key] = value
        else:
            raise ValueError(
                f"README.md:{line}: unknown readme-test item {item!r} "
                f"(flags {', '.join(FLAGS)}; keys {', '.join(k + '=' for k in KEYS)})"
            )
    return frozenset(flags), options


def parse_blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text, each with its directive (if any)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    pending: tuple[int, str, str] | None = None  # (line, kind, body) of a directive
    heading = ""  # slug of the current heading
    seen: dict[str, int] = {}  # blocks seen under each heading
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = DIRECTIVE.match(line)
        fence = FENCE.match(line)
        if directive:
            if pending is not None:
                raise ValueError(f"README.md:{pending[0]}: directive not right before a fence")
            pending = (i + 1, directive.group(1), directive.group(2).strip())
            i += 1
            continue
        if fence:
            lang = fence.group(1).strip()
            end = next((j for j in range(i + 1, len(lines)) if lines[j] == "```"), None)
            if end is None:
                raise ValueError(f"README.md:{i + 1}: fence never closed")
            fragment: str | None = None
            flags: frozenset[str] = frozenset()
            options: dict[str, str] = {}
            if pending is not None:
                where, kind, body = pending
                if kind == "fragment":
                    if not body:
                        raise ValueError(f"README.md:{where}: a fragment needs a reason")
                    fragment = body
                else:
                    flags, options = parse_directive(body, where)
            code = "\n".join(lines[i + 1 : end]) + "\n"
            seen[heading] = seen.get(heading, 0) + 1
            section = heading if seen[heading] == 1 else f"{heading}-{seen[heading]}"
            blocks.append(Block(i + 1, lang, code, fragment, flags, options, section))
            pending = None
            i = end + 1
            continue
        if pending is not None:
            raise ValueError(f"README.md:{pending[0]}: directive not right before a fence")
        if line.startswith("#"):
            words = re.findall(r"[a-z0-9]+", line.lower().split(":")[0])
            heading = "-".join(words[:4]) or heading
        i += 1
    if pending is not None:
        raise ValueError(f"README.md:{pending[0]}: directive not right before a fence")
    return blocks


BLOCKS = parse_blocks(README.read_text(encoding="utf-8"))
BY_NAME = {block.name: block for block in BLOCKS}
# Background blocks run around the blocks that name them; every other runnable one is a test.
TESTED = [b for b in BLOCKS if b.runnable and "background" not in b.flags]


# ---------------------------------------------------------------------------- processes


def _session_members(sid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of the process session ``sid``."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getsid(proc.pid) == sid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def _kill_session(sid: int) -> list[str]:
    """SIGKILL what is left of session ``sid``; the command lines of what was left."""
    left = _session_members(sid)
    names = []
    for proc in left:
        with contextlib.suppress(psutil.Error):
            names.append(" ".join(proc.cmdline())[:120] or proc.name())
            proc.kill()
    psutil.wait_procs(left, timeout=10)
    return names


def _popen(argv: list[str], cwd: Path, env: dict[str, str], **kwargs: Any) -> subprocess.Popen:
    # Own session: every process the block starts can be found (and stopped) afterwards.
    return subprocess.Popen(argv, cwd=cwd, env=env, start_new_session=True, text=True, **kwargs)


def run_block(block: Block, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run one block to completion (or its timeout) in a fresh subprocess."""
    script = cwd / f"readme_{block.name}.{'py' if block.lang == 'python' else 'sh'}"
    script.write_text(block.code)
    argv = [sys.executable, script.name] if block.lang == "python" else ["bash", "-eu", script.name]
    proc = _popen(argv, cwd, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = proc.communicate(timeout=block.timeout_s)
    except subprocess.TimeoutExpired:
        _kill_session(proc.pid)
        stdout, stderr = proc.communicate()
        pytest.fail(
            f"README.md:{block.line} ({block.name}) ran past {block.timeout_s:.0f} s\n"
            f"--- stdout\n{stdout[-3000:]}\n--- stderr\n{stderr[-3000:]}"
        )
    except BaseException:
        _kill_session(proc.pid)
        raise
    left = _kill_session(proc.pid)
    assert not left, f"README.md:{block.line} left processes running: {left}"
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def _describe(result: subprocess.CompletedProcess[str]) -> str:
    out, err = result.stdout[-4000:], result.stderr[-4000:]
    return f"exit {result.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"


# ------------------------------------------------------------------- background servers


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        if probe.connect_ex((host, port)) == 0:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


@contextlib.contextmanager
def serve_in_background(block: Block, cwd: Path, env: dict[str, str]) -> Iterator[None]:
    """`tempomem serve` as written, in the background: up until /healthz answers, then stopped
    as Ctrl-C would (SIGINT to its foreground process group), waiting for every process of
    its session (Ray's included) to exit."""
    url = httpx.URL(SERVE_URL)
    if _port_in_use(url.host, url.port or 80):
        pytest.fail(
            f"port {url.port} on {url.host} is already in use; the README's `tempomem serve` "
            f"example (README.md:{block.line}) needs it. Stop whatever listens there and rerun."
        )
    script = cwd / "readme_serve.sh"
    script.write_text(block.code)
    log_path = cwd / "serve.log"
    with log_path.open("w") as log:
        proc = _popen(["bash", "-eu", script.name], cwd, env, stdout=log, stderr=subprocess.STDOUT)

    def tail() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    try:
        deadline = time.monotonic() + SERVE_READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"`tempomem serve` exited with {proc.returncode}:\n{tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{SERVE_URL}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"no /healthz in {SERVE_READY_TIMEOUT_S:.0f} s:\n{tail()}")
            time.sleep(0.5)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        clean = True
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            clean = False
        deadline = time.monotonic() + STOP_GRACE_S
        while _session_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _kill_session(proc.pid)
        proc.wait(timeout=10)
        assert clean and not left, f"`tempomem serve` did not stop on SIGINT: {left}\n{tail()}"


SERVERS: dict[str, Callable[[Block, Path, dict[str, str]], contextlib.AbstractContextManager]] = {
    "serve": serve_in_background,
}


# ------------------------------------------------------ per-block setup and assertions


@dataclass
class BlockRun:
    block: Block
    cwd: Path
    env: dict[str, str]
    result: subprocess.CompletedProcess[str] | None = None

    @property
    def stdout(self) -> str:
        assert self.result is not None
        return self.result.stdout


Check = Callable[[BlockRun], Iterator[None]]
CHECKS: dict[str, Check] = {}


def check(name: str) -> Callable[[Check], Check]:
    """Register a generator: its code before ``yield`` sets up, after it asserts."""

    def register(fn: Check) -> Check:
        CHECKS[name] = fn
        return fn

    return register


@check("passkey")
def _passkey(run: BlockRun) -> Iterator[None]:
    yield
    found = re.search(r"(\d+) tokens; the pass key is(.*)", run.stdout)
    assert found, run.stdout
    assert int(found.group(1)) >= 4000, "the document should be at least 4k tokens"
    assert re.search(r"\b24933\b", found.group(2)), f"pass key not retrieved: {found.group(0)!r}"


@check("controller")
def _controller(run: BlockRun) -> Iterator[None]:
    yield
    found = re.search(r"([\d.]+) steps/s, median step (\d+) ms", run.stdout)
    assert found, run.stdout
    assert "store down" not in run.stdout
    assert "last_step_id=99" in run.stdout
    # The measured rate, for the README's text (see `pytest -rP` or -s).
    print(f"controller (tiny-llama via tempomem serve): {found.group(0)}")


@check("direct-stream")
def _direct_stream(run: BlockRun) -> Iterator[None]:
    yield
    assert "direct: True" in run.stdout, run.stdout
    assert "frames in memory: 8" in run.stdout, run.stdout  # the default capacity, 8 frames


@check("eval")
def _eval(run: BlockRun) -> Iterator[None]:
    yield
    for out in ("out/eval", "out/tmaze"):
        report = json.loads((run.cwd / out / "report.json").read_text())
        assert report, out
        for plot in ("success.png", "latency.png", "timeline.png"):
            assert (run.cwd / out / plot).stat().st_size > 0, (out, plot)


class _FakeResponses(http.server.BaseHTTPRequestHandler):
    """A scripted OpenAI Responses API: `POST /v1/responses` asks for get_weather(Paris) until
    the input holds the tool's output, then answers with it."""

    requests: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.requests.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        )
        if self.path != "/v1/responses":
            self.send_error(404)
            return
        items = body.get("input") if isinstance(body.get("input"), list) else []
        outputs = [
            i for i in items if isinstance(i, dict) and i.get("type") == "function_call_output"
        ]
        n = len(self.requests)
        if outputs:
            text = f"It is {outputs[-1]['output']}."
            output: list[dict[str, Any]] = [
                {
                    "type": "message",
                    "id": f"msg_{n}",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ]
        else:
            output = [
                {
                    "type": "function_call",
                    "id": f"fc_{n}",
                    "call_id": f"call_{n}",
                    "name": "get_weather",
                    "arguments": json.dumps({"city": "Paris"}),
                    "status": "completed",
                }
            ]
        response = {
            "id": f"resp_{n}",
            "object": "response",
            "created_at": time.time(),
            "model": body.get("model", "scripted"),
            "status": "completed",
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": 1,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 1,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 2,
            },
        }
        data = json.dumps(response).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@check("agent")
def _agent(run: BlockRun) -> Iterator[None]:
    requests: list[dict[str, Any]] = []
    handler = type("Handler", (_FakeResponses,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    run.env.update(
        OPENAI_BASE_URL=f"http://127.0.0.1:{server.server_address[1]}/v1",
        OPENAI_API_KEY="sk-test",
        OPENAI_AGENTS_DISABLE_TRACING="1",
    )
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert [r["path"] for r in requests] == ["/v1/responses"] * 2, requests
    assert all(r["auth"] == "Bearer sk-test" for r in requests)
    first, second = (r["body"] for r in requests)
    assert [t["name"] for t in first["tools"]] == ["get_weather"]
    tool_outputs = [i for i in second["input"] if i.get("type") == "function_call_output"]
    assert [i["output"] for i in tool_outputs] == ["18 C and sunny in Paris"]
    # The hook put the time (and its advice) into each model call's instructions.
    assert all("Current time:" in (r["body"].get("instructions") or "") for r in requests)
    assert "It is 18 C and sunny in Paris." in run.stdout


# ------------------------------------------------------------------------------ the tests


def test_every_block_runs_here_or_is_a_fragment() -> None:
    """A new unmarked block becomes a test; a bad directive, language or reference fails."""
    assert TESTED, "no runnable README blocks found"
    tested = {b.line for b in TESTED}
    names = [b.name for b in BLOCKS if b.runnable]
    assert len(names) == len(set(names)), f"duplicate block names (give an id=): {names}"
    for block in BLOCKS:
        where = f"README.md:{block.line}"
        assert block.lang in LANGUAGES, f"{where}: fence language {block.lang!r} not in {LANGUAGES}"
        if block.lang == "text" or block.fragment is not None:
            assert not block.flags and not block.options, f"{where}: directive on an unrun block"
            continue
        if "background" in block.flags:
            assert block.lang == "bash" and block.name in SERVERS, (
                f"{where}: a background block needs bash and an id with a starter in SERVERS"
            )
            users = [b for b in TESTED if b.options.get("after") == block.name]
            assert users, f"{where}: background block {block.name!r} is used by no after="
            assert all(b.line > block.line for b in users), f"{where}: after= before the server"
        else:
            assert block.line in tested, f"{where}: neither run here nor marked fragment"
        after = block.options.get("after")
        if after is not None:
            server = BY_NAME.get(after)
            assert server is not None and "background" in server.flags, (
                f"{where}: after={after} names no background block"
            )
    for name in CHECKS:
        assert name in BY_NAME and BY_NAME[name] in TESTED, f"CHECKS[{name!r}]: no such block"


def test_parser_reads_directives() -> None:
    text = (
        "<!-- fragment: needs a robot -->\n```python\nrobot.go()\n```\n\n"
        "<!-- readme-test: slow, id=up, background -->\n```bash\nserve\n```\n"
        "<!-- readme-test: after=up, timeout=30 -->\n```python\nprint(1)\n```\n"
        "```text\nout\n```\n"
    )
    fragment, server, client, output = parse_blocks(text)
    assert fragment.fragment == "needs a robot" and not fragment.runnable
    assert server.flags == {"slow", "background"} and server.name == "up"
    assert client.options == {"after": "up", "timeout": "30"} and client.timeout_s == 30
    assert client.code == "print(1)\n" and client.line == 11
    assert output.lang == "text" and not output.runnable
    with pytest.raises(ValueError, match="unknown readme-test item"):
        parse_blocks("<!-- readme-test: fast -->\n```python\npass\n```\n")
    with pytest.raises(ValueError, match="not right before a fence"):
        parse_blocks("<!-- fragment: x -->\n\n```python\npass\n```\n")
    with pytest.raises(ValueError, match="needs a reason"):
        parse_blocks("<!-- fragment: -->\n```python\npass\n```\n")


def test_markdown_links_stay_in_the_repository() -> None:
    """README.md and docs/ link only to files inside the repository (or to web pages)."""
    for doc in [README, *sorted((ROOT / "docs").rglob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            assert path.is_relative_to(ROOT), f"{doc.name} links outside the repository: {target}"
            assert path.exists(), f"{doc.name} links to a missing file: {target}"


def _params() -> list[Any]:
    params = []
    for block in TESTED:
        after = BY_NAME.get(block.options.get("after", ""))
        marks = []
        if "slow" in block.flags or (after is not None and "slow" in after.flags):
            marks.append(pytest.mark.slow)
        if "REDIS_URL" in block.code:
            marks.append(pytest.mark.redis)
        params.append(pytest.param(block, marks=marks, id=block.name))
    return params


@pytest.mark.timeout(900)
@pytest.mark.parametrize("block", _params())
def test_readme_block(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env["RAY_ADDRESS"] = "local"
    if "REDIS_URL" in block.code:
        env["REDIS_URL"] = request.getfixturevalue("redis_server").url
    run = BlockRun(block, tmp_path, env)
    with contextlib.ExitStack() as stack:
        after = block.options.get("after")
        if after is not None:
            server = BY_NAME[after]
            stack.enter_context(SERVERS[server.name](server, tmp_path, dict(env)))
        if block.name in CHECKS:
            stack.enter_context(contextlib.contextmanager(CHECKS[block.name])(run))
        run.result = run_block(block, tmp_path, run.env)
        assert run.result.returncode == 0, f"README.md:{block.line}: {_describe(run.result)}"
