"""tunekit.train: the PyTorch FSDP2 training engine shared by SFT and DPO.

Kept import-light (the CLI imports this package): import the modules you need, e.g.
`from tunekit.train.sft import run_sft`. Map of the package:

    params.py       TrainParams (shared) and SFTParams (notebooks/30_sft)
    distributed.py  start-up from a plain process / torchrun / mpirun (OMPI_*, $PBS_NODEFILE)
    layout.py       parallel-layout and plan checks before any work
    modeling.py     HF model -> FSDP2 (per layer + root), mixed precision, attention choice
    batches.py      packed items -> micro-batches with block-diagonal masks or varlen offsets
    loss.py         chunked token log-probs and the SFT loss (no full-vocab logits)
    schedule.py     warmup/cosine/hold LR schedule and the deterministic data order
    loop.py         the generic loop over a Task (SFT here, DPO later), validation
    checkpoint.py   atomic DCP checkpoints, keep-last + top-k, resume
    deadline.py     own time limit and PBS walltime
    monitor.py      metrics.jsonl, progress bar, wandb, loss curve
    publish.py      <run_dir>/hf_model/ (safetensors + config + tokenizer with the chat template)
    session.py      one training attempt end to end (train_session, read_result)
    launch.py       the notebook kernel launching torchrun/mpirun workers
    sft.py          SFTTask, run_sft (notebook), train_sft (one rank), worker entry point
    synthetic.py    contract-exact synthetic packed data for tests and benchmarks (+ a worker)
    memory.py       computed per-GPU memory estimate for FSDP2 full fine-tuning
    lora.py         LoRA (peft): official target names, adapters inside FSDP2 units, adapter-only
                    checkpoints, adapters-off switch
    lora_publish.py merged hf_model/ + PEFT lora_adapter/ of a LoRA run
    lora_dpo.py     DPO reference = the LoRA policy with adapters off (lora_reference: base)
    lora_memory.py  computed per-GPU memory estimate for LoRA
"""
