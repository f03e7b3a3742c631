"""The world never knows which row runs: Table 2's rows select from one synthetic world, and the world does not
change per row (else a row's Δ would measure the world, not the recipe)."""

import ast
from pathlib import Path

from conftest import compose_train

import lmm.synth
from lmm.synth.world import prepare_training

from .test_sources import digest

# Config keys that say which run this is: its experiment / row / tags / logger, and what the row selects.
ROW_KEYS = {"experiment", "paper_row", "paper_table", "tags", "logger", "sources", "include", "default_include",
            "format_prompt", "format_suffix", "run_name"}
SYNTH = Path(lmm.synth.__file__).parent


def row_keys_read(source: str) -> set[str]:
    """The :data:`ROW_KEYS` a module's code names: as an attribute (``cfg.logger``), a subscript or ``.get`` key
    (``cfg["tags"]``, ``cfg.get("experiment")``), or any other string constant equal to one."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in ROW_KEYS:
            found.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in ROW_KEYS:
            found.add(node.value)
    return found


def test_the_scan_finds_row_keys():
    assert row_keys_read("t = cfg.logger.tags\nx = cfg.get('experiment')\ny = d['sources']['vqav2']['include']") == {
        "logger", "tags", "experiment", "sources", "include"}
    assert row_keys_read('"""The sources of a run and its experiment."""\nimport lmm.synth.sources\n') == set()


def test_no_synth_module_reads_run_identifying_config():
    modules = sorted(SYNTH.glob("*.py"))
    assert len(modules) > 10
    read = {p.name: keys for p in modules if (keys := row_keys_read(p.read_text(encoding="utf-8")))}
    assert read == {}, f"lmm.synth modules that read run-identifying config: {read}"


def test_rows_0_and_8_prepare_the_same_world(tmp_path):
    roots, tokenizers = {}, {}
    for row in ("row0_llava", "row8_sharegpt"):
        cache = tmp_path / row
        cfg = compose_train(f"+experiment={row}", f"paths.cache_dir={cache}", f"paths.output_dir={tmp_path}/out",
                            "data.twin.n_pretrain=6", "data.twin.n_finetune=80", "data.twin.image_size=24")
        prepare_training(cfg)  # the data twin and the tiny tokenizer (random backbone twins: nothing to train)
        roots[row] = Path(cfg.data.root)
        tokenizers[row] = Path(cfg.model.llm.tokenizer).relative_to(cache)
        assert roots[row].is_relative_to(cache)
    rel = {row: root.relative_to(tmp_path / row) for row, root in roots.items()}
    assert rel["row0_llava"] == rel["row8_sharegpt"] and tokenizers["row0_llava"] == tokenizers["row8_sharegpt"]
    files = {row: digest(root) for row, root in roots.items()}
    assert files["row0_llava"] == files["row8_sharegpt"]
    assert "llava_v1_5_mix665k.json" in files["row0_llava"] and len(files["row0_llava"]) > 80
