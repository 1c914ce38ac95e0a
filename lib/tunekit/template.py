"""The llm-jp-4 tuning prompt format as an HF chat template, matching the training token ids.

`CHAT_TEMPLATE` renders a conversation to a string that the kit's tokenizers turn into exactly the
ids training used (`tunekit.data.encode`, "kit" style), so `tok.apply_chat_template(messages,
add_generation_prompt=True)` and vLLM's `llm.chat` feed the model the prompt it was trained on:

    <|bos|>SYSTEM\n\n### 指示:\nUSER\n\n### 応答:\nASSISTANT<|eos|>\n\n### 指示:\nUSER2 ...

Why a plain string reproduces the official token semantics: the kit's tokenizers (like
SentencePiece on each stretch of text) add the dummy prefix `▁` to every stretch of text that
follows a special token, and no llm-jp piece contains a newline, so tokenisation never merges
across the `\n` that starts every block. Hence `<|bos|>SYSTEM...` gives [bos] + sp(system) + the
first instruction without its prefix (official `[1:]`), `<|eos|>\n\n### 指示:` gives the `▁` the
official SFT code keeps on turns >= 2, and the response after `### 応答:\n` gives sp("\n" +
answer)[2:]. With an EMPTY system the first instruction keeps its `▁` (the official SFT code drops
it, the official DPO code keeps it); the kit's "kit" style does the same in training, the
"official" style reproduces the official SFT ids instead (see data/README.md).

Unlike the official export template, the real system content is used; a conversation without a
system message gets `DEFAULT_SYSTEM` (the sentence the official template always used).

Tokenizers converted with a Metaspace pre-tokenizer `prepend_scheme="first"` (transformers' default
for new conversions) add `▁` only at the very start of the input; `CHAT_TEMPLATE_FIRST` spells those
prefixes as spaces for them. `chat_template_for(tok)` picks the right variant by probing, and
`install_chat_template(tok)` sets it. The "official" style refuses such tokenizers
(`official_style_refusal`): with them the official code's own ids differ from SentencePiece's.
"""
from __future__ import annotations

import hashlib

# The fixed system sentence of the official export template; used when a conversation has none.
DEFAULT_SYSTEM = "以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。"
INSTRUCTION = "\n\n### 指示:\n"
RESPONSE = "\n\n### 応答:\n"


def _jinja(space_after_special: bool) -> str:
    """Build the Jinja source; `space_after_special` adds the two spaces explained above."""
    sp = " " if space_after_special else ""
    system = DEFAULT_SYSTEM.replace("'", "\\'")
    return (
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
        "{%- else -%}"
        f"{{%- set system = '{system}' -%}}{{%- set turns = messages -%}}"
        "{%- endif -%}"
        "{{- bos_token -}}"
        f"{{{{- '{sp}' + system -}}}}"
        "{%- for m in turns -%}"
        "{%- if m['role'] == 'user' -%}"
        # Turn >= 2: official SFT keeps the instruction's dummy prefix here (see module doc).
        f"{{%- if loop.index0 > 0 and turns[loop.index0 - 1]['role'] == 'assistant' -%}}"
        f"{{{{- '{sp}' -}}}}{{%- endif -%}}"
        "{{- '\\n\\n### 指示:\\n' + m['content'] -}}"
        "{%- elif m['role'] == 'assistant' -%}"
        "{{- '\\n\\n### 応答:\\n' + m['content'] + eos_token -}}"
        "{%- else -%}"
        "{{- raise_exception('llm-jp template: only one leading system message, then user and "
        "assistant messages are supported (got role ' + m['role'] + ')') -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '\\n\\n### 応答:\\n' -}}{%- endif -%}"
    )


# For tokenizers that prefix every stretch of text after a special token with `▁` (the kit's).
CHAT_TEMPLATE: str = _jinja(space_after_special=False)
# For Metaspace `prepend_scheme="first"` conversions that prefix only the start of the input.
CHAT_TEMPLATE_FIRST: str = _jinja(space_after_special=True)

# Changes whenever the template text or the token semantics change; part of every cache key.
TEMPLATE_VERSION = "llmjp-v1-" + hashlib.sha256(
    (CHAT_TEMPLATE + CHAT_TEMPLATE_FIRST).encode()).hexdigest()[:12]


def official_style_refusal(info) -> str | None:
    """Why `template_style="official"` cannot reproduce the official ids with this tokenizer (None: it can).

    `info` is the tokenizer's `encode.TokenizerInfo`. The official code tokenises its strings with
    the model's HF tokenizer; the kit's "official" style reproduces those ids for tokenizers that
    add the dummy prefix `▁` like SentencePiece, to every stretch of text (llm-jp's, the kit's own:
    exact, tested piece for piece). A Metaspace tokenizer (`prepend_scheme="first"`/"always", the
    default of newer transformers conversions) adds no `▁` before text that starts with a space and,
    with "first", none after `<|bos|>`, so the official DPO prompt and an SFT system prompt of
    spaces would come out differently from the official ids: refused rather than silently wrong.
    """
    if getattr(info, "space_for_prefix", False):
        return ("template_style='official' needs a tokenizer that adds the dummy prefix '▁' like "
                "SentencePiece (llm-jp's does); this one is a Metaspace tokenizer, with which the "
                "official ids cannot be reproduced exactly (use template_style='kit')")
    return None


def prefixes_after_special(tok) -> bool:
    """True if the tokenizer prepends the dummy prefix `▁` to text that follows a special token."""
    eos = tok.eos_token or tok.bos_token
    ids = tok(f"{eos}\n", add_special_tokens=False)["input_ids"]
    nl = tok("\n", add_special_tokens=False)["input_ids"]
    # "legacy": "<eos>\n" -> [eos, ▁, <0x0A>] like "\n" alone; "first": [eos, <0x0A>].
    return len(ids) - 1 == len(nl)


def chat_template_for(tok) -> str:
    """The chat template variant whose rendering reproduces the training ids with this tokenizer."""
    return CHAT_TEMPLATE if prefixes_after_special(tok) else CHAT_TEMPLATE_FIRST


def install_chat_template(tok) -> None:
    """Set `tok.chat_template` to the matching variant (save_pretrained then writes it)."""
    tok.chat_template = chat_template_for(tok)
