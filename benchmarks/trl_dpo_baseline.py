"""TRL's DPOTrainer on given pairs: the outside baseline of benchmarks/bench_dpo.py (not a benchmark itself).

    <trl-python> benchmarks/trl_dpo_baseline.py REQUEST.json RESULT.json

Runs in a side environment that holds TRL 1.16.0 on top of the kit's torch and transformers
(bench_dpo.py builds it once under .cache/side-envs/). The request names the model dir and holds
the token ids of the pairs; the dataset handed to TRL is exactly what TRL's own tokenisation step
produces (`prompt_ids`, `chosen_ids`, `rejected_ids`), so TRL trains on the kit's ids with its own
collator (rows padded to the longest sequence, chosen and rejected stacked), its own loss and its
own reference handling (`precompute_ref_log_probs` false: a live frozen copy; true: a pass before
training). The result holds the step times and the process's peak resident memory.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _peak_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("VmHWM:")).split()[1]) / 1024


def _tokenizer(pad_id: int, vocab: int):
    # Only the pad id is used (the collator pads with it): a word-level tokenizer naming every id.
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    names = {f"t{i}": i for i in range(vocab)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(names, unk_token="t0")))
    tok.pad_token, tok.eos_token = f"t{pad_id}", "t2"
    return tok


def main(request_path: str, result_path: str) -> int:
    """Train `steps` optimizer steps with TRL's DPOTrainer and write the timings."""
    req = json.loads(Path(request_path).read_text())
    import torch

    torch.set_num_threads(req["threads"])
    torch.manual_seed(0)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class GivenIds(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # already the output of TRL's tokenisation step

    marks: list[float] = []
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    rows = [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in req["pairs"]]
    accum = req["global_batch"] // req["micro_batch"]
    args = DPOConfig(output_dir=req["out_dir"], per_device_train_batch_size=req["micro_batch"],
                     gradient_accumulation_steps=accum, max_steps=req["steps"], learning_rate=1e-4,
                     lr_scheduler_type="constant", beta=0.5, max_length=None, logging_steps=1,
                     save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
                     bf16=torch.cuda.is_available(), dataloader_num_workers=0, seed=0,
                     precompute_ref_log_probs=req["precompute"], disable_tqdm=True)
    t_load = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(req["model_dir"], dtype=torch.float32, attn_implementation="sdpa")
    trainer = GivenIds(model=model, args=args, train_dataset=Dataset.from_list(rows),
                       processing_class=_tokenizer(req["pad_id"], req["vocab"]), callbacks=[Clock()])
    t_train = time.perf_counter()
    trainer.train()
    step_s = (marks[-1] - marks[0]) / max(len(marks) - 1, 1)
    out = {"step_s": step_s, "peak_mb": _peak_mb(), "losses": losses,
           "setup_s": t_train - t_load, "train_s": time.perf_counter() - t_train}
    if torch.cuda.is_available():
        out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    Path(result_path).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
