"""The two entry points compose at both scales: `python eval.py checkpoint=<model> scale=paper` is one switch (issue
22 item 1), and training's checkpoint settings (`checkpointing.*`) no longer collide with eval's `checkpoint=`
(item 4)."""

import pytest
from conftest import REPO
from hydra import compose, initialize_config_dir
from omegaconf import MissingMandatoryValue


def compose_eval(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("eval", overrides=[f"paths.root_dir={REPO}", *overrides])


def test_eval_at_paper_scale_composes_and_reads_the_real_benchmark_files():
    cfg = compose_eval("checkpoint=/models/llava-v1.5-7b", "scale=paper")
    assert cfg.checkpoint == "/models/llava-v1.5-7b"
    assert cfg.eval.synthetic_benchmarks is None  # no twins built: the files under playground/data/eval are read
    assert cfg.eval.data_root == f"{REPO}/playground/data/eval"


def test_eval_without_a_checkpoint_says_checkpoint_is_missing():
    cfg = compose_eval()  # the scale config's training checkpoint settings no longer land on `checkpoint`
    with pytest.raises(MissingMandatoryValue, match="checkpoint"):
        _ = cfg.checkpoint


@pytest.mark.parametrize("scale,every", [("tiny", 50), ("paper", 500)])
def test_training_checkpoint_settings_live_under_checkpointing(scale, every):
    from conftest import compose_train

    cfg = compose_train("paths.output_dir=/tmp/x", scale=scale)
    assert cfg.checkpointing.every_n_steps == every
    assert cfg.callbacks.step_checkpoints.every_n_steps == every
    assert "checkpoint" not in cfg
