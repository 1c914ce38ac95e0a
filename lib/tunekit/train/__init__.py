"""tunekit.train: SFT and DPO on one PyTorch FSDP2 engine (CPU/gloo for tests, GPUs/NCCL on ABCI).

Kept import-light (the CLI imports this package): import the modules you need, e.g.
`from tunekit.train.sft import run_sft`. Map of the package, in reading order:

    params.py       the parameters of 30_sft and 40_dpo, composed of groups declared once
    sft.py          the SFT stage: objective (`sft_loss`), data, prepare_sft / run_sft / train_sft
    dpo.py          the DPO stage: objective with its reference (cache or adapters off), data adapter,
                    prepare_dpo / run_dpo / train_dpo
    dpo_loss.py     the DPO loss: the official preference-loss family (dpo, ipo, rpo_*) per pair
    engine.py       the engine: FSDP2 model with the chunked log-prob head, AdamW, THE training loop
                    (normalisation next to backward), validation, resume, publishing, train_result.json
    batches.py      packed SFT sequences and DPO pairs -> micro-batches with isolated documents
    plan.py         layout checks, step plan, LR schedule, data order, deadline (pure functions)
    checkpoint.py   atomic DCP checkpoints, keep-last + top-k, resume
    publish.py      <run_dir>/hf_model/ (+ lora_adapter/): safetensors, config, tokenizer + chat template
    refcache.py     DPO reference log-probs computed once and cached by content
    lora.py         LoRA (peft): official target names, adapters inside FSDP2 units, adapters-off switch
    distributed.py  process group from a plain process / torchrun / mpirun, collectives, launching workers
    monitor.py      metrics.jsonl, progress bar, wandb
    report.py       the notebooks' tables and figures, summary.json and the nbval check values
    cli.py          `tunekit train <stage>`: the one worker entry, stages from its STAGES registry
"""
