"""``stages.<stage>.compile``: torch.compile of the LLM's decoder layers (default off). A compiled step gives the
eager step's loss and gradients (backend aot_eager: traced and run through AOTAutograd, no C compiler needed), for a
full fine-tune and for LoRA, with activation checkpointing on as the twins train; DeepSpeed is refused up front."""

import pytest
import torch
from conftest import compose_train

from lmm.models.llm import compile_options, decoder_layers
from lmm.training.module import LlavaLitModule

from .test_lora import _batch, _model, _randomize_adapters


def _grads(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values, logits="labelled")
    out.loss.backward()
    return float(out.loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_compile_is_a_stage_key_off_by_default():
    cfg = compose_train("paths.output_dir=/tmp/x")
    for name in ("pretrain", "finetune"):
        spec = cfg.stages[name].compile
        assert spec.enabled is False and spec.backend == "inductor" and spec.dynamic is True
        assert compile_options(spec) is None
    assert cfg.model.llm.attn_implementation is None  # transformers' default (SDPA)
    on = compose_train("paths.output_dir=/tmp/x", "stages.finetune.compile.enabled=true")
    assert compile_options(on.stages.finetune.compile) == {"backend": "inductor", "mode": None, "dynamic": True,
                                                          "fullgraph": False}
    with pytest.raises(ValueError, match="unknown compile option"):
        compile_options({"enabled": True, "backnd": "eager"})


def test_compile_under_deepspeed_is_refused_before_anything_is_built():
    from lmm.training.run import ConfigError, check_compile

    check_compile(compose_train("paths.output_dir=/tmp/x", "strategy@stages.finetune.strategy=deepspeed_zero3"))
    cfg = compose_train("paths.output_dir=/tmp/x", "strategy@stages.finetune.strategy=deepspeed_zero3",
                        "stages.finetune.compile.enabled=true")
    with pytest.raises(ConfigError, match="not supported under DeepSpeed.*strategy=fsdp"):
        check_compile(cfg)


@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8, "dropout": 0.0}], ids=["full", "lora"])
def test_a_compiled_step_gives_the_eager_loss_and_gradients(tiny_tokenizer, lora):
    model = _model(tiny_tokenizer)
    model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    module = LlavaLitModule(model, ["connector", "llm"], 2e-5, lora=lora,
                            compile={"enabled": True, "backend": "aot_eager", "mode": None, "dynamic": True})
    if lora:
        _randomize_adapters(model)
    model.train()
    batch = _batch(tiny_tokenizer)
    loss_ref, g_ref = _grads(model, batch)
    module.configure_model()  # what Lightning calls at fit start (after FSDP2 sharding, when there is any)
    layers = decoder_layers(model.llm)
    assert all(layer._compiled_call_impl is not None for layer in layers)
    loss, g = _grads(model, batch)
    assert abs(loss - loss_ref) <= 1e-6
    assert g.keys() == g_ref.keys() and len(g) > 0
    for name, grad in g_ref.items():
        assert torch.allclose(grad, g[name], atol=1e-6, rtol=1e-5), name
    assert any("layers" in n for n in g)  # the compiled layers' own weights (or adapters) got their gradients
    assert set(model.state_dict()) == set(_model(tiny_tokenizer).state_dict()) or lora  # names unchanged
    frames = dict(torch._dynamo.utils.counters["frames"])
    assert frames.get("total", 0) > 0
    model.eval()  # eval mode (generation during training) runs the layers eagerly: nothing more is compiled
    with torch.no_grad():
        model(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values)
    assert dict(torch._dynamo.utils.counters["frames"]) == frames
    module.teardown("fit")  # the model is handed on eager (next stage, saving, evaluation)
    assert all(layer._compiled_call_impl is None for layer in layers)
