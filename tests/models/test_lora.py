"""LoRA through peft: the trainable set, learning rates, merge = adapter + base, LoRA folder round trip."""

import pytest
import torch
from conftest import TINY_LLM, TINY_VISION

from lmm.data.batch import Example, collate
from lmm.models.build import build_llava
from lmm.models.checkpoint import load_model_dir, main, merge_lora_dir, save_model_dir
from lmm.models.lora import DEFAULT_LORA, is_lora, lora_target_modules, merge_lora
from lmm.text.templates import get_template
from lmm.text.tokenize import tokenize_conversation
from lmm.training.stages import apply_stage, param_groups

LORA = {"r": 128, "alpha": 256, "dropout": 0.05}
SPEC = {"model": {"vision": TINY_VISION, "connector": {"name": "mlp2x_gelu"}, "llm": TINY_LLM, "max_length": 512},
        "template": "vicuna_v1", "max_length": 512}
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _model(tok, hd=None):
    torch.manual_seed(0)
    return build_llava(TINY_VISION, {"name": "mlp2x_gelu"}, TINY_LLM, 512, tok, hd=hd)


def _batch(tok):
    t = get_template("vicuna_v1")
    exs = []
    for k, (q, a) in enumerate([("<image>\nWhat color is the circle?", "Red."), ("Hi", "Hello there."),
                                ("<image>\nHow many shapes?", "Two shapes, a circle and a square.")]):
        tk = tokenize_conversation([(q, a)], t, tok)
        exs.append(Example(str(k), tk.input_ids, tk.labels, torch.randn(1, 3, 28, 28) if "<image>" in q else None))
    return collate(exs, tok.pad_token_id)


def _randomize_adapters(model):
    """peft starts B at 0 (the adapter is a no-op); random A and B make the merge test meaningful."""
    with torch.no_grad():
        for p in model.llm.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)


def _logits(model, batch):
    with torch.no_grad():
        out = model(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values)
    return out.logits[out.attention_mask.bool()]


def test_lora_trainable_set_and_learning_rates(tiny_tokenizer):
    model = _model(tiny_tokenizer, hd={"enabled": True})
    assert lora_target_modules(model.llm) == sorted(PROJ)  # every Linear but lm_head
    assert DEFAULT_LORA == LORA
    table = apply_stage(model, ["connector", "llm"], LORA)
    assert is_lora(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    layers = TINY_LLM["config"]["num_hidden_layers"]
    block = {f"{i}.{'self_attn' if m in PROJ[:4] else 'mlp'}.{m}" for i in range(layers) for m in PROJ}
    expected_lora = {f"llm.base_model.model.model.layers.{b}.lora_{ab}.default.weight" for b in block for ab in "AB"}
    expected = expected_lora | {f"connector.{k}" for k in ("0.weight", "0.bias", "2.weight", "2.bias")} | {"hd.row_end"}
    assert trainable == expected
    for n, p in model.named_parameters():  # r 128: A is [128, in], B is [out, 128]; scaling α/r = 2
        if "lora_A" in n:
            assert p.shape[0] == 128
    q = model.llm.base_model.model.model.layers[0].self_attn.q_proj
    assert q.scaling["default"] == 2.0 and q.lora_dropout["default"].p == 0.05
    rows = {r["module"]: r for r in table}
    assert rows["vision"]["trainable"] == 0 and rows["llm"]["trainable"] == sum(
        p.numel() for n, p in model.named_parameters() if n in expected_lora)
    groups = {g["name"]: g for g in param_groups(model, 2e-4, 2e-5)}
    assert groups["connector"]["lr"] == 2e-5 and groups["llm"]["lr"] == 2e-4
    assert {id(p) for p in groups["connector"]["params"]} == {id(p) for p in model.connector.parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in groups["llm"]["params"]} == expected_lora | {"hd.row_end"}
    with pytest.raises(ValueError, match="put 'llm' in trainable"):
        apply_stage(_model(tiny_tokenizer), ["connector"], LORA)


def test_only_trainables_get_gradients(tiny_tokenizer):
    model = _model(tiny_tokenizer)
    apply_stage(model, ["connector", "llm"], {"r": 4, "alpha": 8, "dropout": 0.0})
    _randomize_adapters(model)
    model.train()
    b = _batch(tiny_tokenizer)
    model(b.input_ids, b.attention_mask, b.labels, b.pixel_values).loss.backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n
    assert all(p.grad.abs().sum() > 0 for p in model.connector.parameters())


def test_merged_weights_equal_adapter_plus_base(tiny_tokenizer):
    model = _model(tiny_tokenizer)
    apply_stage(model, ["connector", "llm"], LORA)
    _randomize_adapters(model)
    model.eval()
    b = _batch(tiny_tokenizer)
    with_adapter = _logits(model, b)
    with model.llm.disable_adapter():
        base = _logits(model, b)
    assert (with_adapter - base).abs().max() > 1e-2  # the adapters do change the output
    merge_lora(model)
    assert not is_lora(model) and type(model.llm).__name__ == "LlamaForCausalLM"
    assert set(model.state_dict()) == set(_model(tiny_tokenizer).state_dict())
    assert torch.allclose(_logits(model, b), with_adapter, atol=1e-5, rtol=0)


def test_lora_folder_round_trip_and_merge_step(tiny_tokenizer, tmp_path):
    model = _model(tiny_tokenizer, hd=None)
    apply_stage(model, ["connector", "llm"], LORA)
    _randomize_adapters(model)
    with torch.no_grad():
        model.connector[0].bias.add_(1.0)  # a trained connector, different from the random init
    model.eval()
    b = _batch(tiny_tokenizer)
    ref = _logits(model, b)
    folder = save_model_dir(model, tiny_tokenizer, SPEC, tmp_path / "lora")
    files = {p.name for p in folder.iterdir()}
    assert {"adapter", "non_lora_trainables.safetensors", "base.safetensors", "tokenizer", "lmm_model.yaml"} <= files
    assert "model.safetensors" not in files and (folder / "adapter" / "adapter_config.json").exists()
    from safetensors.torch import load_file

    assert set(load_file(str(folder / "non_lora_trainables.safetensors"))) == {
        "connector.0.weight", "connector.0.bias", "connector.2.weight", "connector.2.bias"}
    base = load_file(str(folder / "base.safetensors"))
    assert set(base) == {k for k in _model(tiny_tokenizer).state_dict() if not k.startswith("connector.")}
    assert torch.equal(base["llm.model.layers.0.self_attn.q_proj.weight"],
                       model.llm.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight)

    again, _, spec = load_model_dir(folder, merge_lora=False)
    assert is_lora(again) and spec["lora"]["r"] == 128 and spec["lora"]["base"] == "base.safetensors"
    assert torch.allclose(_logits(again, b), ref, atol=1e-6, rtol=0)
    assert any(p.requires_grad for p in again.llm.parameters())  # unmerged: ready to train on
    merged, _, _ = load_model_dir(folder)  # default: merged into full weights
    assert not is_lora(merged)
    assert torch.allclose(_logits(merged, b), ref, atol=1e-5, rtol=0)

    full = merge_lora_dir(folder, tmp_path / "merged")
    assert (full / "model.safetensors").exists() and not (full / "adapter").exists()
    loaded, _, spec = load_model_dir(full)
    assert "lora" not in spec and spec["merged_from"]
    assert torch.allclose(_logits(loaded, b), ref, atol=1e-5, rtol=0)


def test_merge_cli_and_errors(tiny_tokenizer, tmp_path):
    from lmm.models.lora import add_lora

    model = _model(tiny_tokenizer)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        merge_lora(model)
    add_lora(model, r=4, alpha=8, dropout=0.0)
    with pytest.raises(ValueError, match="already has LoRA r=4"):
        add_lora(model, **LORA)
    save_model_dir(model, tiny_tokenizer, SPEC, tmp_path / "lora")
    main(["merge", str(tmp_path / "lora"), str(tmp_path / "full")])
    assert (tmp_path / "full" / "model.safetensors").exists()
