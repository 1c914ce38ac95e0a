"""What transformers makes of an HF model/tokenizer folder, as JSON (run in any transformers version).

    python compat_probe.py MODEL_DIR        # prints one JSON object

Self-contained on purpose (standard library + transformers, no torch, no tunekit): it runs both in
the kit's environment and inside the small side environments of `tunekit.model.compat` that hold
the transformers versions of the competition (4.57.0 in the submission image, 4.47.0 in the
official training environment), and the two JSON objects are compared. It reports:
* `config`: the AutoConfig fields that decide the architecture (rope theta and dtype read the way
  each version stores them), or null when the folder has no config.json;
* `tokenizer`: class, special tokens and ids, the ids of probe texts (with and without special
  tokens) and the decoded text, or `error` when AutoTokenizer fails;
* `chat`: `apply_chat_template(messages, add_generation_prompt=True, tokenize=True)` ids for a
  user-only prompt (the official submission's), a system + user prompt and a multi-turn one.
"""
from __future__ import annotations

import json
import os
import sys

TEXTS = ["1 + 1 = 2", "方程式 3x + 5 = 20 を解きなさい。", " a  b ", "\n\n### 指示:\nx\n\n### 応答:\n",
         "答え<|eos|>", "<|bos|>x", "<|pad|><pad><|unk|><unk>", "\\boxed{\\frac{1}{2}}", ""]
CHATS = [
    [{"role": "user", "content": "次の方程式を解きなさい。x^2 - 5x + 6 = 0"}],
    [{"role": "system", "content": "以下は数学の問題です。"}, {"role": "user", "content": "x^2 = 4 を解け"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c"}],
]
CONFIG_FIELDS = ["model_type", "architectures", "vocab_size", "hidden_size", "intermediate_size",
                 "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                 "max_position_embeddings", "rms_norm_eps", "hidden_act", "tie_word_embeddings",
                 "attention_bias", "mlp_bias", "bos_token_id", "eos_token_id", "pad_token_id"]
ROLES = ["bos", "eos", "unk", "pad", "mask", "sep", "cls"]


def _ids(out):
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _config(model_dir: str):
    from transformers import AutoConfig

    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        return None
    import warnings

    import transformers

    cfg = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    out = {f: getattr(cfg, f, None) for f in CONFIG_FIELDS}
    # Read RoPE and dtype where THIS version reads them (4.x: `rope_theta`, `rope_scaling`,
    # `torch_dtype`; 5.x: `rope_parameters`, `dtype`), so a field only one of them knows shows up.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if int(transformers.__version__.split(".")[0]) >= 5:
            rope = dict(getattr(cfg, "rope_parameters", None) or {})
            out["rope_theta"], out["rope_type"] = rope.get("rope_theta"), rope.get("rope_type", "default")
            dtype = getattr(cfg, "dtype", None)
        else:
            scaling = getattr(cfg, "rope_scaling", None) or {}
            out["rope_theta"] = getattr(cfg, "rope_theta", None)
            out["rope_type"] = scaling.get("rope_type") or scaling.get("type") or "default"
            dtype = getattr(cfg, "torch_dtype", None)
    out["dtype"] = None if dtype is None else str(dtype).replace("torch.", "")
    return out


def _tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except Exception as exc:  # the point of the probe: report what fails, in one line
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}, None
    info = {"class": type(tok).__name__, "vocab": len(tok),
            "special": {r: [getattr(tok, f"{r}_token", None), getattr(tok, f"{r}_token_id", None)] for r in ROLES},
            "ids": [tok(t)["input_ids"] for t in TEXTS],
            "ids_plain": [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS],
            "decoded": [tok.decode(tok(t)["input_ids"], skip_special_tokens=True) for t in TEXTS]}
    chat = None
    if getattr(tok, "chat_template", None):
        chat = [_ids(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True)) for m in CHATS]
    return info, chat


def probe(model_dir: str) -> dict:
    """The probe of one folder (see module doc)."""
    import transformers

    tokenizer, chat = _tokenizer(model_dir)
    return {"transformers": transformers.__version__, "config": _config(model_dir),
            "tokenizer": tokenizer, "chat": chat}


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    print(json.dumps(probe(sys.argv[1]), ensure_ascii=False))
