"""A tiny twin of a *pretrained* vision tower, built offline.

LLaVA freezes a pretrained CLIP whose patch features already name what is in the picture; the connector and the
LLM only have to read them. A frozen *random* tower is no twin of that: on the synthetic scenes its patch features
mix a shape with its colour (a linear probe, max-pooled over patches, finds a shape in 68–74 % of scenes where
chance is 53 %), and a tiny LLM trained on them learns colours and counts but never which shapes are present. So a
twin block may carry ``pretrain:``: the random twin is first trained once on rendered synthetic scenes — a linear
head on the features of the layer LLaVA reads (``select_layer``), max-pooled over patches, predicts the scene's
attributes (:func:`lmm.synth.scenes.attribute_targets`) — and saved as a transformers checkpoint under the cache,
which ``from_pretrained`` then loads like the real tower. The same probe then finds a shape in 95–99 % of scenes.
Deterministic under ``seed`` (its own, 0 in the configs: the "released" tower every run shares, not the run's
``seed``): on one machine the same bytes in any fresh cache, whatever the process's thread count (trained with one
thread, :mod:`lmm.synth.twin_cache`); cached by a hash of the twin config and the synthetic data version, like the
tiny tokenizer.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from lmm.data.images import ImageTransform
from lmm.models.build import random_twin_config
from lmm.models.vision import build_vision_tower
from lmm.synth.scenes import attribute_targets, make_scene, render
from lmm.synth.twin_cache import cached_twin, fit, save_twin

TOWER_VERSION = 1
DEFAULTS = {"steps": 800, "batch_size": 128, "lr": 2.0e-3, "weight_decay": 0.05, "render_size": 64,
            "text_prob": 0.3, "seed": 0}


def _scene_batch(rng: random.Random, transform: ImageTransform, n: int, render_size: int, text_prob: float):
    images, targets = [], []
    for _ in range(n):
        scene = make_scene(rng, text_prob=text_prob, aspects=(1.0, 4 / 3, 3 / 4))
        buffer = io.BytesIO()
        render(scene, render_size).save(buffer, format="JPEG", quality=95)  # as the synthetic data is stored
        images.append(transform(Image.open(buffer)))
        targets.append(attribute_targets(scene))
    return torch.stack(images), torch.tensor(targets)


def pretrain_twin_tower(vision: dict[str, Any], cache_dir: str | Path) -> Path:
    """Train (or find in ``cache_dir/towers``) the pretrained twin of the vision config ``vision`` (a
    ``model/vision`` group dict whose ``twin`` block has ``pretrain``); returns the checkpoint folder."""
    twin = dict(vision["twin"])
    settings = {**DEFAULTS, **(twin.pop("pretrain") or {})}
    if vision.get("kind", "hf") != "hf":
        raise ValueError("twin pretraining supports transformers towers (kind: hf) only")
    key = {"v": TOWER_VERSION, "model_type": vision.get("model_type", "clip"), "config": twin,
           "select_layer": vision.get("select_layer", -2), "select_feature": vision.get("select_feature", "patch"),
           "pretrain": settings}
    return cached_twin(cache_dir, "towers", key, settings["seed"],
                       lambda folder, key: _pretrain(vision, settings, key, folder))


def _pretrain(vision: dict[str, Any], settings: dict, key: dict, folder: Path) -> Path:
    tower = build_vision_tower(**random_twin_config(vision))
    model = tower.model.train().requires_grad_(True)
    rng = random.Random(settings["seed"])
    transform = ImageTransform(tower.image_size, "pad", tower.image_mean, tower.image_std)
    n_targets = len(_scene_batch(rng, transform, 1, 8, 0.0)[1][0])
    head = torch.nn.Linear(tower.hidden_size, n_targets)

    def step_loss() -> torch.Tensor:
        x, y = _scene_batch(rng, transform, settings["batch_size"], settings["render_size"], settings["text_prob"])
        hidden = model(pixel_values=x, output_hidden_states=True).hidden_states[tower.select_layer]
        return F.binary_cross_entropy_with_logits(head(tower._select(hidden)).amax(dim=1), y)

    loss = fit(step_loss, [*model.parameters(), *head.parameters()], settings, f"vision twin {folder.name}")
    return save_twin(model, folder, key, loss)
