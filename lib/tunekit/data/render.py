"""Human views of tokenised examples: which tokens are trained on.

Marks are plain text (no colours) so they survive papermill, nbval and log files:
trained tokens are wrapped in ⟦ ⟧; special tokens appear as their names (<|bos|>, <|eos|>).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

OPEN, CLOSE = "⟦", "⟧"


def _decode_prefix(tok, ids: Sequence[int], n: int) -> str:
    return tok.decode(list(ids[:n]), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def marked_text(ids: Sequence[int], mask: Sequence[int], tok) -> str:
    """The decoded sequence with every run of trained tokens wrapped in ⟦ ⟧.

    Each run is the difference of two prefix decodes, so spaces and multi-byte characters split
    over byte tokens come out exactly as in the full decode.
    """
    ids = [int(i) for i in ids]
    mask = [int(m) for m in mask]
    bounds = [0] + [k for k in range(1, len(ids)) if mask[k] != mask[k - 1]] + [len(ids)]
    out, prev = [], ""
    for a, b in zip(bounds[:-1], bounds[1:]):
        text = _decode_prefix(tok, ids, b)
        piece = text[len(prev):] if text.startswith(prev) else tok.decode(ids[a:b], skip_special_tokens=False)
        out.append(f"{OPEN}{piece}{CLOSE}" if mask[a] else piece)
        prev = text
    return "".join(out)


def pair_text(prompt: Sequence[int], chosen: Sequence[int], rejected: Sequence[int], tok) -> str:
    """A DPO pair: the prompt once, then both responses marked as scored (⟦ ⟧)."""
    lines = ["PROMPT:", marked_text(list(prompt), [0] * len(prompt), tok)]
    for name, resp in (("CHOSEN", chosen), ("REJECTED", rejected)):
        full = list(prompt) + list(resp)
        text = marked_text(full, [0] * len(prompt) + [1] * len(resp), tok)
        start = text.find(OPEN)
        lines += [f"{name}:", text[start:] if start >= 0 else "(empty)"]
    return "\n".join(lines)


def token_table(ids: Sequence[int], mask: Sequence[int], tok, limit: int = 60):
    """A pandas DataFrame of the first `limit` tokens: position, id, piece, trained."""
    import pandas as pd

    ids = np.asarray(ids)[:limit]
    pieces = tok.convert_ids_to_tokens([int(i) for i in ids])
    return pd.DataFrame({"pos": np.arange(len(ids)), "id": ids, "piece": pieces,
                         "trained": np.asarray(mask)[:limit].astype(bool)})
