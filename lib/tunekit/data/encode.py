"""Records -> token ids with the llm-jp tuning semantics (FACTS.md section 3), for any
SentencePiece-style HF tokenizer (newline = its own byte token, as in llm-jp).

Official SFT (`sft_dataset.py`), with sp(x) = SentencePiece ids of x INCLUDING the dummy prefix `▁`:
    [bos] + sp(system)                                              loss 0
    per turn k: sp("\\n\\n### 指示:\\n" + user + "\\n\\n### 応答:\\n")   loss 0, `[1:]` on turn 1 only
                sp("\\n" + assistant)[2:] + [eos]                     loss 1
`[1:]` drops the dummy prefix, `[2:]` the dummy prefix and the newline byte. The official code
appended the text "<|eos|>" and let the tokenizer map it; here eos is appended by id, because raw
SentencePiece splits that text into pieces.

Two styles:
- "official": exactly the above, piece for piece.
- "kit" (default): the ids of the chat template's rendering, i.e. one tokenizer call per stretch of
  text between special tokens: [bos] + sp(system + instr_1 + answer_1) + [eos] + sp(instr_2 +
  answer_2) + [eos] ... The loss mask starts after the newline that ends "### 応答:\\n". Because no
  piece contains a newline, this equals "official" except in two places: with an EMPTY system the
  first instruction keeps its `▁` (official SFT drops it, official DPO keeps it), and where a
  vocabulary has exact score ties (e.g. '#'+'##' vs '##'+'#') the tied split inside an answer may
  differ, since SentencePiece's Viterbi breaks ties by float rounding that depends on the text
  before. "kit" thus guarantees training ids == `apply_chat_template` ids for every input.

DPO: "official" tokenises one prompt string (no eos after earlier answers, no `▁` before later
instructions) and prompt + response jointly; "kit" builds the prompt exactly like an SFT
conversation whose last user turn is unanswered, so SFT, DPO and the chat template give the SAME
prompt ids. Responses get no eos unless asked (the official DPO code appends none).

HF tokenizers converted with a Metaspace `prepend_scheme="first"` do not add the dummy prefix to
text that already starts with a space; `probe` detects that and `sp_text` compensates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import UserError
from ..template import INSTRUCTION, RESPONSE, official_style_refusal

STYLES = ("kit", "official")


@dataclass(frozen=True)
class TokenizerInfo:
    """What the builders need to know about a tokenizer, found by probing it once."""

    bos_id: int
    eos_id: int
    pad_id: int
    prefix_ids: tuple[int, ...]    # the dummy prefix before text that starts with "\n" (llm-jp: ▁)
    newline_ids: tuple[int, ...]   # "\n" inside text: one token (llm-jp: the byte token <0x0A>)
    space_for_prefix: bool         # encode " " + text to get SentencePiece's dummy prefix


def encode_batch(tok, texts: Sequence[str]) -> list[list[int]]:
    """Ids of each text without special tokens added (special-token text inside is still mapped)."""
    fast = getattr(tok, "encode_texts", None)
    if fast is not None:  # tunekit.data.tokenizer.SentencePieceTokenizer
        return fast(texts)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:  # the Rust tokenizer directly: no BatchEncoding overhead
        return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]
    return tok(list(texts), add_special_tokens=False)["input_ids"]


def probe(tok) -> TokenizerInfo:
    """Probe a tokenizer for its special ids, dummy prefix and newline token (memoised on it)."""
    cached = getattr(tok, "_tunekit_info", None)
    if cached is not None:
        return cached
    info = _probe(tok)
    try:
        tok._tunekit_info = info
    except AttributeError:
        pass
    return info


def _probe(tok) -> TokenizerInfo:
    if tok.bos_token_id is None or tok.eos_token_id is None:
        raise UserError("tokenizer: it has no bos or eos token (the llm-jp format needs both; use "
                        "the model's own tokenizer)")
    one, two, x, sx = encode_batch(tok, ["\n", "\n\n", "x", " x"])
    nl = tuple(two[len(one):])
    newline_in_pieces = any("\n" in piece for piece in tok.get_vocab())
    if len(nl) != 1 or tuple(one[-1:]) != nl or list(two) != list(one) + list(nl) or newline_in_pieces:
        raise UserError("tokenizer: it does not encode every newline as one token of its own, which "
                        "the llm-jp format's [1:]/[2:] slicing relies on (use a SentencePiece "
                        "tokenizer with byte fallback and no newline pieces, like llm-jp's)")
    prefix = tuple(one[:-1])
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    # SentencePiece always adds the dummy prefix, so sp(" x") != sp("x"); "first"-style HF
    # conversions give the same ids for both, and encoding " " + text restores the prefix.
    return TokenizerInfo(int(tok.bos_token_id), int(tok.eos_token_id), int(pad), prefix, nl,
                         space_for_prefix=bool(prefix) and x == sx)


def sp_text(text: str, info: TokenizerInfo) -> str:
    """The string whose HF ids equal SentencePiece's ids of `text` (dummy prefix included)."""
    # A "first"-style tokenizer adds the prefix itself unless the text starts with a space.
    return " " + text if info.space_for_prefix and text.startswith(" ") else text


def check_style(style: str) -> None:
    """UserError unless style is "kit" or "official"."""
    if style not in STYLES:
        raise UserError(f"template style {style!r} is unknown (use 'kit' or 'official')")


def _strip(ids: list[int], lead: tuple[int, ...], what: str) -> list[int]:
    if tuple(ids[: len(lead)]) != lead:
        # Cannot happen with one-token newlines (checked by probe); guards against odd tokenizers.
        raise UserError(f"tokenizer: {what} does not start with the expected {list(lead)} "
                        "(this tokenizer does not behave like llm-jp's SentencePiece)")
    return ids[len(lead):]


def _after_newlines(ids: list[int], count: int, nl: int) -> int:
    """Index just after the `count`-th newline token (every "\\n" is exactly one token)."""
    at = -1
    try:
        for _ in range(count):
            at = ids.index(nl, at + 1)   # C-speed scan; prompts hold only a few newlines
    except ValueError:
        raise UserError("tokenizer: fewer newline tokens than newlines in the text (this "
                        "tokenizer does not behave like llm-jp's SentencePiece)") from None
    return at + 1


# --------------------------------------------------------------------------- conversations
def _blocks(messages: list[dict]) -> list[tuple[str, str | None]]:
    """[(instruction block, answer or None)] per user turn."""
    rest = messages[1:]
    return [(INSTRUCTION + rest[i]["content"] + RESPONSE,
             rest[i + 1]["content"] if i + 1 < len(rest) else None) for i in range(0, len(rest), 2)]


def conversation_segments(messages: list[dict], info: TokenizerInfo, style: str = "kit") -> list[str]:
    """The strings one conversation is tokenised as (one tokenizer call each), in order.

    official: system, instruction 1, "\\n" + answer 1, instruction 2, ... (as the official code).
    kit: one string per stretch between special tokens: system + instruction 1 + answer 1,
    instruction 2 + answer 2, ...; an unanswered last turn ends with its instruction.
    """
    check_style(style)
    blocks = _blocks(messages)
    system = messages[0]["content"]
    if style == "official" and (why := official_style_refusal(info)):
        raise UserError(f"tokenizer: {why}")
    if style == "official":
        segs = [system]
        for instr, answer in blocks:
            segs += [instr] + ([] if answer is None else ["\n" + answer])
    else:
        segs = [instr + (answer or "") for instr, answer in blocks] or [""]
        segs[0] = system + segs[0]
    return [sp_text(s, info) for s in segs]


def join_runs(encoded: list[list[int]], messages: list[dict], info: TokenizerInfo,
              style: str = "kit") -> tuple[list[int], list[int]]:
    """(input_ids, runs) from the encoded `conversation_segments`: `runs` are the lengths of the
    alternating no-loss / loss stretches, starting with no-loss (loss = answers and their eos)."""
    ids, runs = [info.bos_id], []
    blocks = _blocks(messages)
    if style == "official":
        ids += encoded[0]
        quiet = 1 + len(encoded[0])
        k = 1
        for turn, (_, answer) in enumerate(blocks):
            prompt = list(encoded[k]) if turn else _strip(list(encoded[k]), info.prefix_ids, "the first instruction")
            ids += prompt
            quiet += len(prompt)
            k += 1
            if answer is not None:
                resp = _strip(list(encoded[k]), info.prefix_ids + info.newline_ids, "an answer")
                ids += resp
                ids.append(info.eos_id)
                runs += [quiet, len(resp) + 1]
                quiet = 0
                k += 1
        return ids, runs + ([quiet] if quiet else [])
    quiet = 1
    for turn, ((instr, answer), seg) in enumerate(zip(blocks, encoded)):
        prompt_text = messages[0]["content"] + instr if turn == 0 else instr
        cut = _after_newlines(seg, prompt_text.count("\n"), info.newline_ids[0])
        ids += seg
        if answer is None:
            quiet += len(seg)
            continue
        ids.append(info.eos_id)
        runs += [quiet + cut, len(seg) - cut + 1]
        quiet = 0
    if not blocks:  # a system message alone
        ids += encoded[0]
        quiet += len(encoded[0])
    return ids, runs + ([quiet] if quiet else [])


def runs_to_mask(runs: list[int]) -> list[int]:
    """Expand alternating no-loss/loss run lengths into a 0/1 list."""
    mask: list[int] = []
    for k, n in enumerate(runs):
        mask += [k % 2] * n
    return mask


def join_segments(encoded: list[list[int]], messages: list[dict], info: TokenizerInfo,
                  style: str = "kit") -> tuple[list[int], list[int]]:
    """(input_ids, loss_mask) from the encoded `conversation_segments`; loss 1 on answers + eos."""
    ids, runs = join_runs(encoded, messages, info, style)
    return ids, runs_to_mask(runs)


def sft_messages(messages: list[dict]) -> list[dict]:
    """The messages an SFT example trains on: a trailing unanswered user turn is ignored."""
    return messages[:-1] if messages[-1]["role"] == "user" else messages


def sft_ids(messages: list[dict], tok, info: TokenizerInfo | None = None,
            style: str = "kit") -> tuple[list[int], list[int]]:
    """(input_ids, loss_mask) of one SFT conversation; mask 1 on answers including eos."""
    info = info or probe(tok)
    msgs = sft_messages(messages)
    return join_segments(encode_batch(tok, conversation_segments(msgs, info, style)), msgs, info, style)


# --------------------------------------------------------------------------- DPO
def dpo_segments(record: dict, info: TokenizerInfo, style: str = "kit") -> list[str]:
    """The strings to tokenise for one DPO record: the prompt's, then chosen's, then rejected's."""
    check_style(style)
    msgs = record["messages"]
    chosen, rejected = record["chosen_response"], record["rejected_response"]
    if style == "official" and (why := official_style_refusal(info)):
        raise UserError(f"tokenizer: {why}")
    if style == "official":
        prompt = msgs[0]["content"] + "".join(
            (INSTRUCTION if m["role"] == "user" else RESPONSE) + m["content"] for m in msgs[1:]) + RESPONSE
        return [sp_text(prompt, info), sp_text(prompt + chosen, info), sp_text(prompt + rejected, info)]
    segs = conversation_segments(msgs, info, "kit")
    # The last stretch (ending "### 応答:\n") is tokenised together with each response, exactly as
    # the chat template renders prompt + answer; its prompt part is identical in both (no piece
    # spans the newline, and Viterbi's path up to it does not depend on what follows).
    return segs[:-1] + [segs[-1] + chosen, segs[-1] + rejected]


def dpo_assemble(encoded: list[list[int]], record: dict, info: TokenizerInfo, style: str = "kit",
                 append_eos: bool = False) -> tuple[list[int], list[int], list[int]]:
    """(prompt_ids, chosen_response_ids, rejected_response_ids) of one DPO record."""
    eos = [info.eos_id] if append_eos else []
    msgs = record["messages"]
    if style == "official":
        prompt = [info.bos_id] + list(encoded[0])
        fulls = [[info.bos_id] + list(e) for e in encoded[1:]]
    else:
        head, _ = join_segments([list(e) for e in encoded[:-2]], msgs[:-1], info, "kit") \
            if len(msgs) > 2 else ([info.bos_id], None)
        last_text = (msgs[0]["content"] if len(msgs) == 2 else "") + INSTRUCTION + msgs[-1]["content"] + RESPONSE
        cut = _after_newlines(list(encoded[-2]), last_text.count("\n"), info.newline_ids[0])
        prompt = head + list(encoded[-2][:cut])
        fulls = [head + list(e) for e in encoded[-2:]]
    out = []
    for full in fulls:
        if full[: len(prompt)] != prompt:  # the official code asserts this
            raise ValueError("prompt ids are not a prefix of the response ids")
        out.append(full[len(prompt):] + eos)
    return prompt, out[0], out[1]


def dpo_ids(record: dict, tok, info: TokenizerInfo | None = None, style: str = "kit",
            append_eos: bool = False) -> tuple[list[int], list[int], list[int]]:
    """(prompt_ids, chosen_ids, rejected_ids) of one DPO record; chosen/rejected include the prompt."""
    info = info or probe(tok)
    prompt, c, r = dpo_assemble(encode_batch(tok, dpo_segments(record, info, style)), record, info,
                                style, append_eos)
    return prompt, prompt + c, prompt + r


def prompt_ids(messages: list[dict], tok, info: TokenizerInfo | None = None) -> list[int]:
    """Training prompt ids ("kit") for a conversation ending with a user turn: what generation sees."""
    rec = {"messages": messages, "chosen_response": "", "rejected_response": ""}
    return dpo_ids(rec, tok, info)[0]


def chat_template_mismatches(messages: list[dict], tok, info: TokenizerInfo | None = None) -> list[str]:
    """Where `tok.apply_chat_template` disagrees with the training ids ("kit" style); [] = agrees.

    Checks the generation prompt after every user turn and the whole conversation when it ends
    with an answer.
    """
    info = info or probe(tok)
    ids_of = lambda out: list(out["input_ids"] if hasattr(out, "keys") else out)  # noqa: E731
    bad = []
    for n in range(2, len(messages) + 1):
        if messages[n - 1]["role"] != "user":
            continue
        got = ids_of(tok.apply_chat_template(messages[:n], add_generation_prompt=True))
        if got != prompt_ids(messages[:n], tok, info):
            bad.append(f"generation prompt after message {n - 1} differs from training")
    if messages[-1]["role"] == "assistant":
        got = ids_of(tok.apply_chat_template(messages))
        if got != sft_ids(messages, tok, info)[0]:
            bad.append("whole conversation differs from the SFT training ids")
    return bad


# --------------------------------------------------------------------------- batches
def encode_sft_records(records: Sequence[dict], tok, info: TokenizerInfo,
                       style: str = "kit") -> list[tuple[list[int], list[int]]]:
    """Encode many SFT records with one batched tokenizer call: [(input_ids, runs)] (see join_runs)."""
    msgs = [sft_messages(r["messages"]) for r in records]
    segs = [conversation_segments(m, info, style) for m in msgs]
    flat = encode_batch(tok, [s for ss in segs for s in ss])
    out, i = [], 0
    for m, ss in zip(msgs, segs):
        out.append(join_runs(flat[i:i + len(ss)], m, info, style))
        i += len(ss)
    return out


def encode_sft_arrays(records: Sequence[dict], tok, info: TokenizerInfo) -> dict[str, Any]:
    """`encode_sft_records` of the "kit" style straight into flat arrays, assembled by numpy rather
    than per record in Python (the cache's hot path): {"tokens", "tokens_len", "mask",
    "loss_tokens"}. The same ids and mask as `join_runs` (tested); UserError where it would raise."""
    import itertools

    import numpy as np

    # The "kit" segments of `conversation_segments`, and the newlines of each one's prompt, built
    # inline: this loop runs once per record of every file (tested equal to the general path).
    segs, prompt_nl, per_record = [], [], []
    marks = INSTRUCTION.count("\n") + RESPONSE.count("\n")
    shift = info.space_for_prefix   # sp_text: a "first"-style tokenizer needs " " before a leading space
    for r in records:
        msgs = r["messages"]
        end = len(msgs) - 1 if msgs[-1]["role"] == "user" else len(msgs)   # sft_messages
        if end < 3 or end % 2 == 0:
            raise ValueError("not an answered conversation")  # (cannot pass validation; see join_runs)
        system = msgs[0]["content"]
        for i in range(1, end, 2):
            user = msgs[i]["content"]
            seg = INSTRUCTION + user + RESPONSE + msgs[i + 1]["content"]
            nl = marks + user.count("\n")
            if i == 1:
                seg = system + seg
                nl += system.count("\n")
            segs.append(" " + seg if shift and seg.startswith(" ") else seg)
            prompt_nl.append(nl)
        per_record.append(end // 2)
    if not records:
        return {"tokens": np.zeros(0, np.int32), "mask": np.zeros(0, np.uint8),
                "tokens_len": np.zeros(0, np.int64), "loss_tokens": np.zeros(0, np.int32)}
    enc = encode_batch(tok, segs)
    n_seg = len(enc)
    seg_len = np.fromiter(map(len, enc), np.int64, count=n_seg)
    # The token stream in its final layout: bos, then each turn's segment followed by its eos (every
    # turn is answered), record after record; numpy reads it straight from the tokenizer's lists.
    bos, eos, stream = [info.bos_id], [info.eos_id], []
    it = iter(enc)
    for n in per_record:
        stream.append(bos)
        for _ in range(n):
            stream.append(next(it))
            stream.append(eos)
    total = int(seg_len.sum()) + n_seg + len(per_record)
    tokens = np.fromiter(itertools.chain.from_iterable(stream), np.int32, count=total)
    del stream, it
    first = np.zeros(n_seg, np.int64)   # 1 for a record's first segment (a bos before it)
    first[np.concatenate(([0], np.cumsum(per_record)[:-1])).astype(np.int64)] = 1
    starts = np.cumsum(first) + np.concatenate(([0], np.cumsum(seg_len + 1)[:-1]))   # each segment's first token
    # Where each segment's loss starts: just after its k-th newline token (k = newlines in its prompt).
    nl_at = np.flatnonzero(tokens == info.newline_ids[0])
    k = np.asarray(prompt_nl, np.int64)
    which = np.searchsorted(nl_at, starts) + k - 1
    need = k > 0   # (every kit prompt holds newlines; 0 would mean loss from the first token)
    ok = which[need] < len(nl_at)
    ok[ok] = nl_at[which[need][ok]] < (starts + seg_len)[need][ok]
    if not ok.all():
        raise UserError("tokenizer: fewer newline tokens than newlines in the text (this "
                        "tokenizer does not behave like llm-jp's SentencePiece)")
    cut = np.zeros(n_seg, np.int64)
    cut[need] = nl_at[which[need]] - starts[need] + 1
    # The mask as runs: (bos +) the prompt part of a segment without loss, its answer and eos with.
    quiet, loud = first + cut, seg_len - cut + 1
    mask = np.repeat(np.tile(np.array([0, 1], np.uint8), n_seg), np.column_stack((quiet, loud)).ravel())
    rec_of_seg = np.repeat(np.arange(len(per_record)), per_record)
    return {"tokens": tokens, "mask": mask,
            "tokens_len": np.bincount(rec_of_seg, seg_len + 1, len(per_record)).astype(np.int64) + 1,
            "loss_tokens": np.bincount(rec_of_seg, loud, len(per_record)).astype(np.int32)}


def encode_dpo_records(records: Sequence[dict], tok, info: TokenizerInfo, style: str = "kit",
                       append_eos: bool = False) -> list[Any]:
    """Encode many DPO records; an item is (prompt, chosen_resp, rejected_resp) or an error string."""
    segs = [dpo_segments(r, info, style) for r in records]
    flat = encode_batch(tok, [s for ss in segs for s in ss])
    out, i = [], 0
    for r, ss in zip(records, segs):
        try:
            out.append(dpo_assemble(flat[i:i + len(ss)], r, info, style, append_eos))
        except ValueError as exc:
            out.append(str(exc))
        i += len(ss)
    return out
