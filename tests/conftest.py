import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.setdefault("LMM_CACHE", str(REPO / ".cache" / "lmm-test")))
# runs a test does not point elsewhere log to a store of the session, never to the project's mlflow.db or a server
os.environ["LMM_STAGE_REUSE"] = "false"  # each test trains what it asks for (tests of reuse turn it on)
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp(prefix='lmm-test-mlflow-')}/mlflow.db"


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The tiny Llama-style SentencePiece tokenizer (legacy=True, as Vicuna's in LLaVA), trained once."""
    from lmm.synth import tokenizer_corpus
    from lmm.text.tokenizer import train_tiny_tokenizer

    tok, _ = train_tiny_tokenizer(tokenizer_corpus(), 1000, CACHE, 2048)
    return tok


TINY_VISION = dict(kind="hf", model_type="clip", config=dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=28, patch_size=7))
TINY_LLM = dict(model_type="llama", config=dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4))


@pytest.fixture
def tiny_model(tiny_tokenizer):
    import torch

    from lmm.models.build import build_llava

    torch.manual_seed(0)
    return build_llava(TINY_VISION, {"name": "mlp2x_gelu"}, TINY_LLM, 512, tiny_tokenizer)


def compose_train(*overrides, scale="tiny"):
    """The composed `train.py` config (as Hydra would build it) for in-process runs; give `paths.output_dir`."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"scale={scale}", f"paths.root_dir={REPO}", *overrides])


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """`python train.py` with no overrides (both stages, evaluation on the 12 synthetic benchmarks), run once per
    session and shared by the tests that check a finished run: (run folder, completed process)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("default_run")
    # every name lookup / connection of the run is recorded in net_audit.log (tests/netaudit, docs/security.md §3)
    env = {**os.environ, "LMM_NET_AUDIT": str(out / "net_audit.log"),
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "tests" / "netaudit"), os.environ.get("PYTHONPATH"))
                                         if p)}
    res = subprocess.run([sys.executable, "train.py", f"hydra.run.dir={out}", f"logger.tracking_uri=sqlite:///{out}/mlflow.db",
                          "trainer.enable_progress_bar=false"],
                         cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return out, res
