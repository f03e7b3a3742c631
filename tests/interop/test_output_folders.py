"""Folders written from another (issue 21 item 12): ``interop export`` / ``import`` and ``checkpoint merge`` never
write over their input, over a non-empty folder only with ``--overwrite``, and never leave a half-written folder."""

import hashlib

import pytest
import torch
from conftest import TINY_LLM, TINY_VISION

from lmm.interop.__main__ import main as interop_main
from lmm.interop.hf_folder import export_llava_hf
from lmm.models.build import build_llava
from lmm.models.checkpoint import load_model_dir, save_model_dir
from lmm.models.checkpoint import main as checkpoint_main
from lmm.models.lora import add_lora

SPEC = {"model": {"vision": TINY_VISION, "connector": {"name": "mlp2x_gelu"}, "llm": TINY_LLM, "max_length": 512},
        "template": "vicuna_v1", "image_aspect_ratio": "pad", "max_length": 512}


def _files(folder):
    """Every file under ``folder`` with the hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture
def folder(tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    model = build_llava(TINY_VISION, {"name": "mlp2x_gelu"}, TINY_LLM, 512, tiny_tokenizer)
    return save_model_dir(model, tiny_tokenizer, SPEC, tmp_path / "ours")


def test_export_and_import_refuse_their_input_and_a_non_empty_folder(folder, tmp_path, capsys):
    before = _files(folder)
    assert interop_main(["export", str(folder), str(folder)]) == 2
    assert interop_main(["export", str(folder), str(folder / "..")]) == 2  # would replace the folder holding it
    assert capsys.readouterr().err.count("is (or holds) the input") == 2
    assert _files(folder) == before
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "notes.txt").write_text("mine")
    assert interop_main(["export", str(folder), str(hf)]) == 2
    assert "not empty; pass --overwrite" in capsys.readouterr().err and _files(hf) == {
        "notes.txt": hashlib.sha256(b"mine").hexdigest()}
    assert interop_main(["export", str(folder), str(hf), "--overwrite"]) == 0
    assert (hf / "config.json").exists() and not (hf / "notes.txt").exists()
    exported = _files(hf)
    assert interop_main(["import", str(hf), str(hf)]) == 2
    assert interop_main(["import", str(hf), str(folder), "--max-length", "512"]) == 2
    assert _files(hf) == exported and _files(folder) == before
    assert interop_main(["import", str(hf), str(folder), "--max-length", "512", "--overwrite"]) == 0
    assert "imported_from" in (folder / "lmm_model.yaml").read_text()
    load_model_dir(folder)
    assert _leftovers(tmp_path) == []


def test_a_failed_export_leaves_nothing_under_its_name(folder, tmp_path):
    with pytest.raises(ValueError, match="image_processor must be auto, pad or clip"):
        export_llava_hf(folder, tmp_path / "hf", image_processor="bogus")  # fails after the weights are written
    assert not (tmp_path / "hf").exists() and _leftovers(tmp_path) == []
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "old.txt").write_text("old")
    with pytest.raises(ValueError, match="image_processor"):
        export_llava_hf(folder, tmp_path / "hf", image_processor="bogus", overwrite=True)
    assert [p.name for p in (tmp_path / "hf").iterdir()] == ["old.txt"] and _leftovers(tmp_path) == []


def test_merge_refuses_its_input_and_a_non_empty_folder(tiny_tokenizer, tmp_path, capsys):
    torch.manual_seed(0)
    model = build_llava(TINY_VISION, {"name": "mlp2x_gelu"}, TINY_LLM, 512, tiny_tokenizer)
    add_lora(model, r=4, alpha=8, dropout=0.0)
    lora = save_model_dir(model, tiny_tokenizer, SPEC, tmp_path / "lora")
    before = _files(lora)
    assert checkpoint_main(["merge", str(lora), str(lora)]) == 2
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert checkpoint_main(["merge", str(lora), str(tmp_path / "full")]) == 2
    err = capsys.readouterr().err
    assert "is (or holds) the input" in err and "not empty; pass --overwrite" in err
    assert _files(lora) == before and [p.name for p in (tmp_path / "full").iterdir()] == ["x"]
    assert checkpoint_main(["merge", str(lora), str(tmp_path / "full"), "--overwrite"]) == 0
    assert (tmp_path / "full" / "model.safetensors").exists() and not (tmp_path / "full" / "x").exists()
    assert _leftovers(tmp_path) == []
