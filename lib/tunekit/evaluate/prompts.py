"""The prompts a model is evaluated with, rendered through the model's own chat template.

The submission sends ONE user message (no system message) through `llm.chat`, i.e. through the
tokenizer's chat template with a generation prompt. We build the same messages and render them
with `tokenizer.apply_chat_template(..., add_generation_prompt=True)`, so what is evaluated here
is what the submission runs, and (with the kit's template) what training saw.
"""
from __future__ import annotations

from typing import Any

# The official example's prompt, verbatim (answer only, no reasoning; it generates 64 tokens).
OFFICIAL_PROMPT = (
    "以下は数学の問題です。\n"
    "問題に対する解答のみを出力してください。\n"
    "推論過程は出力しないでください。\n"
    "\n"
    "# 問題\n"
    "{question}\n"
    "\n"
    "# 解答\n"
)

# Chain of thought ending in one \boxed{}: what strong teams used with sampling + majority vote.
COT_BOXED_PROMPT = (
    "以下は数学の問題です。\n"
    "順を追って考え、途中の計算も書いてください。\n"
    "最後に、最終的な答えだけを \\boxed{{}} の中に一度だけ書いてください。\n"
    "\n"
    "# 問題\n"
    "{question}\n"
    "\n"
    "# 解答\n"
)

PROMPT_STYLES: dict[str, str] = {"official": OFFICIAL_PROMPT, "cot_boxed": COT_BOXED_PROMPT}


def user_prompt(problem: str, style: str = "official") -> str:
    """The user message text for a problem in the given prompt style."""
    from ..errors import UserError

    if style not in PROMPT_STYLES:
        raise UserError(f"prompt_style {style!r} is unknown (use one of {', '.join(PROMPT_STYLES)})")
    return PROMPT_STYLES[style].format(question=problem)


def build_messages(problem: str, style: str = "official") -> list[dict[str, str]]:
    """The chat messages sent for one problem: a single user turn, as in the submission."""
    return [{"role": "user", "content": user_prompt(problem, style)}]


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the rendered chat prompt (template + generation prompt, no extra specials)."""
    from ..errors import UserError

    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{getattr(tokenizer, 'name_or_path', 'tokenizer')}: the tokenizer has no chat "
                        "template, so the submission's llm.chat would fail too (export the model with the "
                        "kit, which installs tunekit.template.CHAT_TEMPLATE)")
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    # transformers 5 returns a BatchEncoding; older versions a plain list of ids.
    ids = out["input_ids"] if hasattr(out, "keys") else out
    return [int(i) for i in ids]


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The rendered prompt text (for showing one example in the notebook)."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
