"""Publishing a LoRA run: merged weights = base + adapter (fp32 tolerance), and a PEFT adapter dir
that peft itself loads to the same model."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import LORA_SPEC as SPEC
from helpers import perturb_adapters, training_model
from helpers import random_batch as batch
from tunekit.train.publish import (ADAPTER_DIR, ADAPTER_WEIGHTS, gather_full_state_dict, merge_adapters,
                                   publish_hook, split_state_dict)

pytestmark = pytest.mark.usefixtures("one_thread")  # CPU matmul results depend on the thread count


def _logps(hf_model, ids, labels):
    with torch.no_grad():
        lp = hf_model(input_ids=ids).logits.float().log_softmax(-1)
    return lp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


@pytest.fixture(scope="module")
def published(model_dir, tmp_path_factory):
    """A LoRA model with non-zero adapters, its live log-probs, and what publishing produced."""
    model, _ = training_model(model_dir, SPEC)
    perturb_adapters(model, seed=4)
    ids, labels = batch(5, n=3, t=20)
    with torch.no_grad():
        live = model(labels=labels, input_ids=ids)
    sd = gather_full_state_dict(model)
    out = tmp_path_factory.mktemp("run") / "hf_model"
    merged, prov = publish_hook(model, sd, out, model_dir, {"stage": "sft", "step": 3})
    return dict(model=model, ids=ids, labels=labels, live=live, sd=sd, merged=merged, prov=prov,
                adapter_dir=out.parent / ADAPTER_DIR)


def test_merged_model_equals_base_plus_adapter(published, model_dir):
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    base_keys = set(load_file(str(model_dir / "model.safetensors")))
    merged = published["merged"]
    assert set(merged) == base_keys  # plain HF names: no base_layer, no lora_ keys
    lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), dtype=torch.float32)
    lm.load_state_dict(merged, strict=True)
    lm.eval()
    got = _logps(lm, published["ids"], published["labels"])
    torch.testing.assert_close(got, published["live"], atol=2e-5, rtol=0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    assert (_logps(base, published["ids"], published["labels"]) - got).abs().max() > 1e-2


def test_unadapted_weights_pass_through_bit_exact(published, model_dir):
    from safetensors.torch import load_file

    base = load_file(str(model_dir / "model.safetensors"))
    adapted = {f"{m}.weight" for m in split_state_dict(published["sd"])[1]}
    assert len(adapted) == 2 * len(SPEC.targets)
    for k, v in base.items():
        if k in adapted:
            assert not torch.equal(published["merged"][k], v), k
        else:
            assert torch.equal(published["merged"][k], v), k


def test_adapter_dir_loads_in_peft_and_matches_live_and_merged(published, model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    d = published["adapter_dir"]
    cfg = json.loads((d / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == SPEC.rank and cfg["lora_alpha"] == SPEC.alpha
    assert sorted(cfg["target_modules"]) == sorted(SPEC.targets)
    assert cfg["base_model_name_or_path"] == str(model_dir.resolve())
    assert (d / ADAPTER_WEIGHTS).is_file()
    prov = json.loads((d / "tunekit_training.json").read_text())
    assert prov["step"] == 3 and prov["lora"]["rank"] == SPEC.rank
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(d)).eval()
    got = _logps(peft_model, published["ids"], published["labels"])
    torch.testing.assert_close(got, published["live"], atol=2e-5, rtol=0)
    # peft's own merge gives the same weights as ours
    theirs = peft_model.merge_and_unload().state_dict()
    for k, v in published["merged"].items():
        torch.testing.assert_close(theirs[k], v, atol=1e-6, rtol=0, msg=k)


def test_provenance_names_the_adapter(published):
    prov = published["prov"]
    assert prov["merged"] is True and prov["lora_adapter"].endswith(ADAPTER_DIR)
    assert prov["lora"]["targets"] == list(SPEC.targets) and prov["lora"]["scaling"] == SPEC.scaling


def test_no_lora_publishes_unchanged(model_dir, tmp_path):
    model, _ = training_model(model_dir, None)
    sd = gather_full_state_dict(model)
    out, prov = publish_hook(model, sd, tmp_path / "hf_model", model_dir, {"step": 1})
    assert out is sd and prov == {"step": 1} and not (tmp_path / ADAPTER_DIR).exists()


def test_merge_math_and_bad_adapters():
    w = torch.randn(6, 5)
    a, b = torch.randn(2, 5), torch.randn(6, 2)
    out = merge_adapters({"m.weight": w}, {"m": {"A": a, "B": b}}, 1.5)
    torch.testing.assert_close(out["m.weight"], w + 1.5 * b @ a)
    with pytest.raises(ValueError, match="both lora_A and lora_B"):
        split_state_dict({"m.base_layer.weight": w, "m.lora_A.default.weight": a})
    with pytest.raises(ValueError, match="without a base weight"):
        merge_adapters({}, {"m": {"A": a, "B": b}}, 1.0)
