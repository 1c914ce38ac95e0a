"""CLI subcommands of tunekit.convert: `tunekit convert nemo-to-hf SRC DST` and `hf-to-nemo SRC DST`.

Both verify the result (weights bit-exact, Megatron-core logits = HF logits) before the output
appears under DST; relative paths are taken from the current directory.
"""
from __future__ import annotations

DTYPE_HELP = "output dtype: auto (= the source's), bf16 or fp32 (default: auto)"
NO_LOGITS_HELP = ("skip the logits check (Megatron-core vs transformers on fixed prompts, one fp32 model "
                  "at a time); the bit-exact weight check always runs")
MEMORY_HELP = ("with --verify-logits full: memory the logits check may use, in GB (default: 4): the whole "
               "model at once when its fp32 copy fits, else a few layers at a time")
LAYERS_HELP = ("which layers the logits check runs: slice (default: the first, middle and last layer, each "
               "with the embedding, final norm and output layer; every layer shares one mapping, whose "
               "bytes are checked bit for bit for all layers) or full (every layer)")


def register(subparsers) -> None:
    """Add `tunekit convert ...`."""
    p = subparsers.add_parser("convert", help="convert checkpoints HF <-> NeMo (official kit layout), verified")
    sub = p.add_subparsers(dest="convert_command", metavar="DIRECTION", required=True)

    n2h = sub.add_parser("nemo-to-hf", help="NeMo dir / official-kit training output / run dir -> HF model dir",
                         description="Convert a NeMo checkpoint into an HF LlamaForCausalLM directory with "
                                     "the kit's chat template. SRC may be a NeMo dir (model_config.yaml + "
                                     "model_weights/), an official-kit training output (step=* folders; "
                                     "no symlink needed), a step=* folder, or a run dir of 21_convert_hf_to_nemo.")
    n2h.add_argument("src", metavar="SRC")
    n2h.add_argument("dst", metavar="DST", help="HF model directory to create")
    n2h.add_argument("--checkpoint", default="last",
                     help="in a training output: 'last' (step=*-last), 'best' (lowest loss in the "
                          "folder name) or a folder name (default: last)")
    n2h.add_argument("--tokenizer", default="",
                     help="tokenizer to publish with the model when SRC has none: 'llm-jp', 'tiny', "
                          "an HF model/tokenizer dir or a run dir (default: the one in SRC)")
    n2h.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"), help=DTYPE_HELP)
    n2h.add_argument("--max-shard-gb", type=float, default=5.0, help="safetensors shard size (default: 5)")
    n2h.add_argument("--no-verify-logits", action="store_true", help=NO_LOGITS_HELP)
    n2h.add_argument("--verify-logits", choices=("slice", "full"), default="slice", help=LAYERS_HELP)
    n2h.add_argument("--logits-memory-gb", type=float, default=4.0, help=MEMORY_HELP)
    n2h.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    n2h.set_defaults(func=_nemo_to_hf)

    h2n = sub.add_parser("hf-to-nemo", help="HF model dir / run dir / 'tiny' -> NeMo dir for the official kit",
                         description="Convert an HF LLaMA model into a NeMo dir in the official kit's layout "
                                     "(model_config.yaml, model_weights/ torch_dist, tokenizer/).")
    h2n.add_argument("src", metavar="SRC", help="'tiny', an HF model dir, or a run dir (its hf_model/)")
    h2n.add_argument("dst", metavar="DST", help="NeMo directory to create")
    h2n.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"), help=DTYPE_HELP)
    h2n.add_argument("--no-verify-logits", action="store_true", help=NO_LOGITS_HELP)
    h2n.add_argument("--verify-logits", choices=("slice", "full"), default="slice", help=LAYERS_HELP)
    h2n.add_argument("--logits-memory-gb", type=float, default=4.0, help=MEMORY_HELP)
    h2n.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    h2n.set_defaults(func=_hf_to_nemo)


def _nemo_to_hf(args) -> int:
    from .api import nemo_to_hf

    nemo_to_hf(args.src, args.dst, dtype=args.dtype, checkpoint=args.checkpoint,
               tokenizer=args.tokenizer, verify_logits=not args.no_verify_logits,
               overwrite=args.overwrite, max_shard_gb=args.max_shard_gb,
               logits_memory_gb=args.logits_memory_gb, logits_layers=args.verify_logits)
    return 0


def _hf_to_nemo(args) -> int:
    from .api import hf_to_nemo

    hf_to_nemo(args.src, args.dst, dtype=args.dtype, verify_logits=not args.no_verify_logits,
               overwrite=args.overwrite, logits_memory_gb=args.logits_memory_gb,
               logits_layers=args.verify_logits)
    return 0
