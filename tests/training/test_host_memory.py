"""Host memory: a finished stage's Trainer, module and optimizer state are gone before the next stage starts; a rank
other than 0 builds the model on the meta device for an FSDP or DeepSpeed ZeRO-3 stage — the same names, shapes,
dtypes and image statistics as the load gives, no weight read — and none after the last stage (the 2-rank runs that
receive rank 0's weights: tests/training/test_distributed.py for FSDP, tests/training/test_deepspeed_cpu.py for
ZeRO-3)."""

import weakref

import lightning as L
import pytest
import torch
import transformers
from conftest import REPO, TINY_LLM, TINY_VISION, compose_train
from omegaconf import OmegaConf

from lmm.models.build import build_llava
from lmm.training.stage_model import holds_whole_model, model_for_stage
from lmm.training.stages import load_connector, save_connector


def signature(model):
    return [(n, tuple(t.shape), t.dtype) for n, t in (*model.named_parameters(), *model.named_buffers())]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny CLIP model folder (text + vision, as openai/clip-vit-large-patch14-336 ships, with its image
    processor) and a tiny Llama folder: what from_pretrained loads at paper scale."""
    root = tmp_path_factory.mktemp("ckpts")
    vision = {k: v for k, v in TINY_VISION["config"].items()}
    clip = transformers.CLIPConfig(text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                    num_attention_heads=2), vision_config=vision, projection_dim=8)
    transformers.CLIPModel(clip).save_pretrained(root / "clip")
    transformers.CLIPImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6], crop_size=28,
                                    size={"shortest_edge": 28}).save_pretrained(root / "clip")
    llm = transformers.AutoConfig.for_model("llama", vocab_size=1000, **TINY_LLM["config"])
    transformers.AutoModelForCausalLM.from_config(llm).save_pretrained(root / "llama")
    return root


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_the_meta_build_is_the_loaded_model_without_its_weights(checkpoints, dtype):
    vision = {"kind": "hf", "name_or_path": str(checkpoints / "clip")}
    llm = {"name_or_path": str(checkpoints / "llama"), "dtype": dtype}
    loaded = build_llava(vision, {"name": "mlp2x_gelu"}, llm, 512)
    meta = build_llava(vision, {"name": "mlp2x_gelu"}, llm, 512, meta=True)
    assert {t.device.type for t in (*meta.parameters(), *meta.buffers())} == {"meta"}
    assert signature(meta) == signature(loaded)
    assert meta.vision.image_mean == loaded.vision.image_mean == (0.1, 0.2, 0.3)
    assert meta.vision.image_std == loaded.vision.image_std
    assert meta.num_image_tokens == loaded.num_image_tokens


def test_a_meta_model_takes_a_connector_file_and_a_stage_without_reading_weights(tiny_tokenizer, tmp_path):
    """What a rank does before sharding (init_connector, a finished stage adopted): structure only, no error."""
    cfg = compose_train(f"paths.output_dir={tmp_path}")
    torch.manual_seed(0)
    whole = build_llava(TINY_VISION, {"name": "mlp2x_gelu"}, TINY_LLM, 512, tiny_tokenizer)
    meta = build_llava(TINY_VISION, {"name": "mlp2x_gelu"}, TINY_LLM, 512, tiny_tokenizer, meta=True)
    assert signature(meta) == signature(whole)
    load_connector(meta, save_connector(whole, tmp_path / "connector.safetensors"))
    assert holds_whole_model(cfg.stages.finetune, rank=0) is True
    assert holds_whole_model(cfg.stages.finetune, rank=1) is True  # auto / ddp replicate the model
    fsdp = OmegaConf.merge(cfg.stages.finetune, {"strategy": {"name": "fsdp"}})
    assert holds_whole_model(fsdp, rank=1) is False
    for zero, whole in ((3, False), (2, True)):  # ZeRO-3 partitions the weights as they are materialised
        ds = OmegaConf.create({"strategy": OmegaConf.load(REPO / "conf" / "strategy" / f"deepspeed_zero{zero}.yaml")})
        assert holds_whole_model(ds, rank=1) is whole  # (the 2-rank ZeRO-3 run: tests/training/test_deepspeed_cpu.py)
    assert holds_whole_model(None, rank=1) is None and model_for_stage(cfg, tiny_tokenizer, [], None, 1) is None


class ReleaseProbe(L.Callback):
    """Stage 1: weak references to its Trainer, LightningModule and optimizer; stage 2, when its fit starts: which
    are still alive (nothing here collects garbage: the run must have let them go)."""

    def __init__(self, stage: str, refs: dict):
        self.stage, self.refs = stage, refs

    def on_train_start(self, trainer, pl_module) -> None:
        if self.stage == "pretrain":
            self.refs.update(trainer=weakref.ref(trainer), module=weakref.ref(pl_module),
                             optimizer=weakref.ref(trainer.optimizers[0]),
                             strategy=weakref.ref(trainer.strategy))

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.stage == "finetune":
            self.refs["alive_at_stage_2"] = sorted(k for k, r in list(self.refs.items()) if r() is not None)


@pytest.mark.slow  # two tiny stages in process (≈ 10 s)
def test_a_finished_stage_is_released_before_the_next_starts(tmp_path):
    from lmm.synth.world import prepare_training
    from lmm.training.run import run_training

    cfg = prepare_training(compose_train(
        f"paths.output_dir={tmp_path}", f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        "data.twin.n_pretrain=16", "data.twin.n_finetune=16", "stages.pretrain.epochs=1", "stages.finetune.epochs=1",
        "eval.after_training=false", "trainer.enable_progress_bar=false", "callbacks.step_checkpoints=null"))
    refs: dict = {}
    run_training(cfg, extra_callbacks=lambda stage, tok, proc: [ReleaseProbe(stage, refs)])
    assert set(refs) >= {"trainer", "module", "optimizer", "strategy"}
    assert refs["alive_at_stage_2"] == []
