"""Test-only stand-in for vLLM's offline API (`LLM`, `SamplingParams`), backed by transformers on the CPU.

It lets the evaluation-environment path (tunekit.evaluate.vllm_backend -> vllm_worker.py in a
subprocess) run end to end without a GPU. It mirrors only what the kit's worker uses and what
vLLM documents for it: `LLM(model=..., seed=...)`, `SamplingParams(n, temperature, top_p,
max_tokens, seed)`, and `LLM.chat(messages, sampling_params=..., use_tqdm=...)` returning one
RequestOutput per conversation with `prompt_token_ids` and `outputs[i].text / .token_ids`. The
prompt is rendered with the tokenizer's chat template (add_generation_prompt) and tokenised
without adding special tokens again. Whether the real vLLM builds the same ids is what
`make gpu-smoke` checks on a GPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

__version__ = "0.0.0+tunekit-test-stand-in"


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    seed: int | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int] = field(default_factory=list)


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]


class LLM:
    def __init__(self, model: str, seed: int | None = None, **_kwargs):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(seed or 0)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()

    def chat(self, messages, sampling_params: SamplingParams | None = None, use_tqdm: bool = True, **_kwargs):
        import torch

        sp = sampling_params or SamplingParams()
        convs = messages if messages and isinstance(messages[0], list) else [messages]
        eos = self.tokenizer.eos_token_id
        results = []
        for conv in convs:
            text = self.tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if os.environ.get("FAKE_VLLM_EXTRA_BOS"):  # tests: a vLLM that adds a second bos
                ids = [self.tokenizer.bos_token_id, *ids]
            outs = []
            for i in range(sp.n):
                with torch.inference_mode():
                    gen = self.model.generate(torch.tensor([ids]), max_new_tokens=sp.max_tokens,
                                              do_sample=sp.temperature > 0, eos_token_id=eos, pad_token_id=eos,
                                              **({"temperature": sp.temperature, "top_p": sp.top_p, "top_k": 0}
                                                 if sp.temperature > 0 else {}))
                new = gen[0, len(ids):].tolist()
                if eos in new:
                    new = new[:new.index(eos) + 1]
                outs.append(CompletionOutput(i, self.tokenizer.decode(new, skip_special_tokens=True), new))
            results.append(RequestOutput(list(ids), outs))
        return results
