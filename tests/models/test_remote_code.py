"""A model folder never runs Python of its own accord (issue 21 item 1): ``trust_remote_code`` in its
``lmm_model.yaml`` is not obeyed; remote code runs only when the caller passes it (eval.py
``eval.trust_remote_code=true``, ``--trust-remote-code`` of ``python -m lmm.interop export`` and
``python -m lmm.models.checkpoint merge``)."""

import json

import pytest
import torch
import yaml
from conftest import TINY_LLM, TINY_VISION
from omegaconf import OmegaConf

from lmm.evaluation.run import load_for_eval
from lmm.interop.__main__ import main as interop_main
from lmm.models.build import build_llava
from lmm.models.checkpoint import SPEC_FILE, RemoteCodeRefused, load_model_dir, save_model_dir
from lmm.models.checkpoint import main as checkpoint_main

SPEC = {"model": {"vision": TINY_VISION, "connector": {"name": "mlp2x_gelu"}, "llm": TINY_LLM, "max_length": 512},
        "template": "vicuna_v1", "image_aspect_ratio": "pad", "max_length": 512}
EVIL = """open({marker!r}, "w").write("ran")
raise RuntimeError("the checkpoint's own Python ran")
"""


@pytest.fixture
def evil(tmp_path, monkeypatch):
    """A checkpoint folder whose config names its own Python (``auto_map``): importing it writes ``marker``."""
    monkeypatch.setattr("transformers.dynamic_module_utils.HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    folder, marker = tmp_path / "evil_ckpt", tmp_path / "marker"
    folder.mkdir()
    auto_map = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel",
                "AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": auto_map}))
    for name in ("configuration_evil.py", "modeling_evil.py"):
        (folder / name).write_text(EVIL.format(marker=str(marker)))
    return folder, marker


@pytest.fixture
def model_folder(tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    model = build_llava(TINY_VISION, {"name": "mlp2x_gelu"}, TINY_LLM, 512, tiny_tokenizer)
    return save_model_dir(model, tiny_tokenizer, SPEC, tmp_path / "model")


def _point_at(folder, part, checkpoint, ask: bool):
    """Rewrite ``folder``'s spec so that its ``part`` (vision / llm) loads from ``checkpoint``."""
    spec = yaml.safe_load((folder / SPEC_FILE).read_text())
    block = {"kind": "hf", "name_or_path": str(checkpoint)} if part == "vision" else {"name_or_path": str(checkpoint)}
    if ask:
        block["trust_remote_code"] = True
    spec["model"][part] = block
    (folder / SPEC_FILE).write_text(yaml.safe_dump(spec))


@pytest.mark.parametrize("part", ["llm", "vision"])
def test_a_spec_asking_for_remote_code_is_refused_and_runs_nothing(model_folder, evil, part):
    checkpoint, marker = evil
    _point_at(model_folder, part, checkpoint, ask=True)
    with pytest.raises(RemoteCodeRefused) as err:
        load_model_dir(model_folder)
    message = str(err.value)
    assert str(model_folder / SPEC_FILE) in message and f"model.{part}.trust_remote_code" in message
    assert "eval.trust_remote_code=true" in message and "--trust-remote-code" in message
    assert not marker.exists()


@pytest.mark.parametrize("part", ["llm", "vision"])
def test_custom_code_of_a_checkpoint_runs_only_when_the_caller_passes_it(model_folder, evil, part):
    """Without the spec asking, the checkpoint's ``auto_map`` is refused too (every ``from_pretrained`` gets an
    explicit False, never transformers' interactive prompt); the caller's True reaches every one of them."""
    checkpoint, marker = evil
    _point_at(model_folder, part, checkpoint, ask=False)
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model_dir(model_folder)
    assert not marker.exists()
    with pytest.raises(RuntimeError, match="the checkpoint's own Python ran"):
        load_model_dir(model_folder, trust_remote_code=True)
    assert marker.read_text() == "ran"


def test_a_tokenizer_naming_its_own_code_is_refused(model_folder, evil):
    _, marker = evil
    (model_folder / "tokenizer" / "tokenization_evil.py").write_text(EVIL.format(marker=str(marker)))
    cfg_path = model_folder / "tokenizer" / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]})
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model_dir(model_folder)
    assert not marker.exists()


def test_the_command_line_switches(model_folder, evil, tmp_path, capsys):
    checkpoint, marker = evil
    _point_at(model_folder, "llm", checkpoint, ask=True)
    cfg = OmegaConf.create({"device": "cpu", "trust_remote_code": False})
    with pytest.raises(RemoteCodeRefused, match="eval.trust_remote_code=true"):
        load_for_eval(cfg, model_folder, tmp_path / "eval")
    assert checkpoint_main(["merge", str(model_folder), str(tmp_path / "merged")]) == 2
    assert interop_main(["export", str(model_folder), str(tmp_path / "hf")]) == 2
    assert capsys.readouterr().err.count("--trust-remote-code") == 2
    assert not marker.exists() and not (tmp_path / "merged").exists() and not (tmp_path / "hf").exists()
    for run in (lambda: load_for_eval(OmegaConf.create({"device": "cpu", "trust_remote_code": True}),
                                      model_folder, tmp_path / "eval"),
                lambda: checkpoint_main(["merge", str(model_folder), str(tmp_path / "merged"), "--trust-remote-code"]),
                lambda: interop_main(["export", str(model_folder), str(tmp_path / "hf"), "--trust-remote-code"])):
        with pytest.raises(RuntimeError, match="the checkpoint's own Python ran"):
            run()
        assert marker.read_text() == "ran"
        marker.unlink()
    assert not (tmp_path / "merged").exists() and not (tmp_path / "hf").exists()
