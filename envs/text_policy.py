"""A frozen LM as a multiple-choice text policy (the text recall task): SmolLM2-135M-Instruct
(ChatML turns) or Gemma 3 270M (Gemma turns, ``<bos>`` first).

Every observation (a sentence) becomes one user turn, the same template at every step (shown
for ChatML; ``TurnFormat`` names each family's markers)::

    prefix  = [<|im_start|>system\\n{system_prompt}<|im_end|>\\n]   (only if system_prompt)
              <|im_start|>user\\n{observation}<|im_end|>\\n
    suffix  = <|im_start|>assistant\\nAnswer:
    choices = [" " + word for word in info["choices"]]      (the query step only, else None)

so frame stacking turns the last frames into an ordinary multi-turn chat, and TempoFit stores
prefixes of one shape. At the query step the trailing ``Options: a, b, c.`` sentence is left
out of the prefix (cloze formulation: the options are scored as continuations, not listed).
Measured on 30-40 seeded ``TextRecallEnv`` queries with the cue in the same observation: listing
the options makes the 135M model pick mostly the first listed one (colour 0.15-0.47, near
chance); leaving them out gives colour 0.67-0.75, object 0.97-1.00, number 1.00 (chance 0.25).
A system prompt did not help (SmolLM's default 0.72 / 0.95 / 1.00, an instruction 0.57 / 0.97
/ 1.00), so the default is none.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from envs.frozen_policy import Frame

TURN_START, TURN_END = "<|im_start|>", "<|im_end|>"
ANSWER_PROMPT = "Answer:"
_OPTIONS = re.compile(r"\s*Options:.*\Z", re.DOTALL)


@dataclass(frozen=True)
class TurnFormat:
    """One model family's chat turns: ``{start}{role}\n{text}{end}\n``."""

    start: str
    end: str
    reply_role: str  # the role whose turn holds the answer
    bos: bool = False  # every frame starts with the tokenizer's BOS (Gemma needs it)


CHATML = TurnFormat(TURN_START, TURN_END, "assistant")
GEMMA = TurnFormat("<start_of_turn>", "<end_of_turn>", "model", bos=True)


class TextChoicePolicy:
    """``envs.frozen_policy.FrozenPolicy`` for text tasks whose query lists option words.

    Args:
        model: a frozen causal LM (put in eval mode with gradients off here).
        tokenizer: its tokenizer; must know the markers of ``turns``.
        system_prompt: text of a system turn repeated in every frame's prefix; None (default)
            or "" for none.
        strip_options: leave the query's trailing "Options: ..." sentence out of the prefix
            (default True; see the module docstring for why).
        turns: the family's turn markers (default ChatML); ``name``: the policy's name.

    ``frame(obs, info)``: ``obs`` is the observation sentence; ``info["choices"]`` the option
    words at the query (``[]`` or missing otherwise). Action ``i`` is option ``i``.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        system_prompt: str | None = None,
        strip_options: bool = True,
        turns: TurnFormat = CHATML,
        name: str = "smollm2",
    ) -> None:
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ValueError(f"system_prompt must be a str or None, got {system_prompt!r}")
        vocab = tokenizer.get_vocab()
        missing = [marker for marker in (turns.start, turns.end) if marker not in vocab]
        if missing:
            raise ValueError(
                f"tokenizer has no turn markers {missing}; this TextChoicePolicy renders "
                f"{turns.start}...{turns.end} turns"
            )
        if turns.bos and tokenizer.bos_token_id is None:
            raise ValueError("the turn format starts frames with BOS; the tokenizer has none")
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.model = model
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt or None
        self.strip_options = bool(strip_options)
        self.turns = turns
        self.name = name
        head = self._turn("system", self.system_prompt) if self.system_prompt else ""
        self._head_ids = [tokenizer.bos_token_id] if turns.bos else []
        self._head_ids += self._encode(head) if head else []
        self._suffix_ids = self._encode(f"{turns.start}{turns.reply_role}\n{ANSWER_PROMPT}")

    def render(self, obs: str, choices: Sequence[str] = ()) -> str:
        """The user-turn text of ``obs`` (the options sentence dropped at a query)."""
        if not self.strip_options or not choices:
            return obs
        return _OPTIONS.sub("", obs).strip() or obs

    def frame(self, obs: Any, info: Mapping[str, Any]) -> Frame:
        if not isinstance(obs, str):
            raise ValueError(f"obs must be the observation text (str), got {type(obs).__name__}")
        words = [str(word) for word in (info.get("choices") or [])]
        user = self._turn("user", self.render(obs, words))
        return Frame(
            prefix_ids=self._head_ids + self._encode(user),
            suffix_ids=list(self._suffix_ids),
            choices=[self._encode(" " + word) for word in words] if words else None,
            default_action=0,
            labels=words,
        )

    def _turn(self, role: str, text: str) -> str:
        return f"{self.turns.start}{role}\n{text}{self.turns.end}\n"

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def __repr__(self) -> str:
        return f"TextChoicePolicy(name={self.name!r}, system_prompt={self.system_prompt!r})"


def load_text_policy(**kwargs: Any) -> TextChoicePolicy:
    """SmolLM2-135M-Instruct (``policies.load_smollm2()``, frozen, CPU) as a
    ``TextChoicePolicy``; ``kwargs`` go to the policy."""
    from policies import load_smollm2

    model, tokenizer = load_smollm2()
    return TextChoicePolicy(model, tokenizer, **kwargs)


def load_gemma3_text_policy(**kwargs: Any) -> TextChoicePolicy:
    """Gemma 3 270M (``policies.load_gemma3()``, base model, frozen, CPU) as a
    ``TextChoicePolicy`` with Gemma turns; ``kwargs`` go to the policy."""
    from policies import load_gemma3

    model, tokenizer = load_gemma3()
    return TextChoicePolicy(model, tokenizer, turns=GEMMA, name="gemma3", **kwargs)
