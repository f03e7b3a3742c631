"""One rank of the 2-process DDP test (launched by test_ddp.py with torchrun-style environment variables)."""

import json
import sys
from pathlib import Path

import lightning as L

from lmm.data.datamodule import build_datamodule
from lmm.data.images import ImageTransform
from lmm.data.processor import SampleProcessor
from lmm.synth import tokenizer_corpus
from lmm.text.templates import get_template
from lmm.text.tokenizer import train_tiny_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data.helpers import Recorder  # noqa: E402


def main(shards: str, out: str, cache: str, accum: int) -> None:
    tok, _ = train_tiny_tokenizer(tokenizer_corpus(), 1000, Path(cache), 2048)
    proc = SampleProcessor(tok, get_template("vicuna_v1"), ImageTransform(28, "pad"))
    cfg = {"num_workers": 1, "finetune": {"shards": shards}}
    dm = build_datamodule(cfg, "finetune", proc, 3, accum, tok.pad_token_id, seed=7)
    rec = Recorder()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, accumulate_grad_batches=accum,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=out)
    trainer.fit(rec, datamodule=dm)
    Path(out, f"rank{trainer.global_rank}.json").write_text(json.dumps(
        {"rank": trainer.global_rank, "world": trainer.world_size, "batches": rec.seen, "counts": dm.counts(),
         "steps": trainer.global_step}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
