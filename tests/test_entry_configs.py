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


# Issue 22 item 2: `eval=official` is LLaVA's own evaluation (scripts/v1_5/eval/*.sh), for eval.py and train.py alike,
# and the default at scale=paper; scale=tiny stays on the fast batched default.
OFFICIAL = {"mode": "official", "batch_size": 1, "dtype": "float16", "max_new_tokens": None, "submissions": True}


def _is_official(ev) -> bool:
    return ({k: ev.get(k) for k in OFFICIAL} == OFFICIAL and ev.benchmark_options.vqav2.split == "test-dev"
            and ev.benchmark_options.vizwiz.split == "test")


@pytest.mark.parametrize("entry", ["eval", "train"])
def test_eval_official_selects_the_official_preset_on_the_command_line(entry):
    import subprocess
    import sys

    extra = ["checkpoint=/models/m"] if entry == "eval" else []
    res = subprocess.run([sys.executable, f"{entry}.py", *extra, "eval=official", "--cfg", "job", "--package", "eval"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    from omegaconf import OmegaConf

    ev = OmegaConf.create(res.stdout)  # the `eval` package printed as its own document
    assert _is_official(ev)
    assert ev.synthetic_benchmarks is not None  # scale=tiny: the twins, now with their test-dev / test splits


@pytest.mark.parametrize("scale,official", [("paper", True), ("tiny", False)])
def test_paper_scale_evaluates_officially_and_tiny_stays_fast(scale, official):
    from conftest import compose_train

    for cfg in (compose_eval("checkpoint=/m", f"scale={scale}"), compose_train("paths.output_dir=/tmp/x", scale=scale)):
        assert _is_official(cfg.eval) is official
        if not official:
            assert cfg.eval.mode == "fast" and cfg.eval.batch_size == 16


def test_the_fast_mode_stays_available_at_paper_scale():
    ev = compose_eval("checkpoint=/m", "scale=paper", "eval=default").eval
    assert ev.mode == "fast" and ev.batch_size == 16 and ev.synthetic_benchmarks is None
