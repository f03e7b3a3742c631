"""The Hydra data group: each shard config composes, parses into stage mixtures, and the synthetic one runs end to end
(twin written, converted on demand into the cache, idempotently, then streamed)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lmm.data.datamodule import build_datamodule
from lmm.data.mixture import FORMAT_SUFFIXES, mixture_from_cfg
from lmm.synth import write_twin
from lmm.synth.world import twin_spec

CONF = Path(__file__).resolve().parents[2] / "conf"


def data_cfg(name, tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(overrides=[f"+data={name}", "+paths=default", "+seed=0",  # data.twin.seed follows the run's
                                 f"paths.root_dir={tmp_path}/root",
                                 f"paths.cache_dir={tmp_path}/cache", *overrides])
    return cfg.data


@pytest.mark.parametrize("name,stages", [("synthetic_shards", {"pretrain", "finetune"}),
                                         ("llava_pretrain_558k", {"pretrain"}),
                                         ("llava_mix665k", {"pretrain", "finetune"})])
def test_data_configs_compose_and_parse(name, stages, tmp_path, processor):
    cfg = data_cfg(name, tmp_path)
    assert {k for k in ("pretrain", "finetune") if k in cfg} == stages
    for stage in stages:
        m = mixture_from_cfg(cfg[stage])
        assert m.json and m.shards is None and m.rules
        dm = build_datamodule(cfg, stage, processor, 4, 2, 0, 0)  # no conversion at build time
        assert dm.shard_dir.parent == tmp_path / "cache" / "shards"
    if name == "llava_mix665k":
        m = mixture_from_cfg(cfg.finetune)
        assert sum(s.count or 0 for s in m.sources.values()) == 665298 - 82783 - 8998  # vqav2 + okvqa: see yaml
        assert {s: m.sources[s].suffix for s in FORMAT_SUFFIXES} == FORMAT_SUFFIXES
        assert m.group_by_modality_length and not mixture_from_cfg(cfg.pretrain).group_by_modality_length
        assert mixture_from_cfg(cfg.pretrain).sources["lcs558k"].count == 558128


def test_synthetic_shards_end_to_end(tmp_path, processor, tiny_tokenizer):
    cfg = data_cfg("synthetic_shards", tmp_path, "data.twin.n_pretrain=16", "data.twin.n_finetune=40", "data.num_workers=0")
    plain = OmegaConf.to_container(cfg, resolve=True)
    write_twin(twin_spec(plain))
    dm = build_datamodule(cfg, "finetune", processor, 4, 1, tiny_tokenizer.pad_token_id, 0)
    dm.prepare_data()
    dm.setup("fit")
    assert (Path(plain["root"]) / "finetune.json").is_file() and (dm.shard_dir / "report.json").is_file()
    assert sorted(i for b in dm.train_dataloader() for i in b.ids) == sorted(dm.manifest.ids)
    assert dm.counts()["data/records_in"] == 40
    again = build_datamodule(cfg, "finetune", processor, 4, 1, tiny_tokenizer.pad_token_id, 0)
    assert again.shard_dir == dm.shard_dir
    tar = next(dm.shard_dir.glob("shard-*.tar"))
    before = tar.stat().st_mtime_ns
    again.prepare_data()  # a second run does no work
    assert tar.stat().st_mtime_ns == before
