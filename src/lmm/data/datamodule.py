"""A LightningDataModule that trains from WebDataset shards: manifest selection → read → decode → prompt policy →
``SampleProcessor`` → LLaVA grouping → collate.

* **Selection** is exact and seed-deterministic through the manifest (:mod:`lmm.data.manifest`); source include /
  weight / subsample come from the stage's mixture (:mod:`lmm.data.mixture`).
* **Order** is LLaVA's modality-length grouping, or a plain shuffle, planned for all ranks at once
  (:func:`lmm.data.sampler.plan_batches`): equal micro-batch counts per rank, disjoint samples, single-modality
  optimizer steps. The plan depends on ``seed`` and the data epoch only.
* **Reading**: workers read their micro-batches' samples straight from the tars by the manifest's member offsets and
  take micro-batches round-robin, which PyTorch's loader returns in order: the batch sequence is the plan whatever
  ``num_workers`` is. The dataset is an ``IterableDataset``, so Lightning adds no ``DistributedSampler``.
* **Bad samples** at load time become :class:`Skipped` items (counted by ``collate`` in ``Batch.skipped``), never a
  dead worker. Per epoch, planned = trained + skipped is logged; :meth:`ShardDataModule.counts` feeds MLflow.
* **Resume**: ``state_dict()`` holds (data epoch, micro-batches processed) and a fingerprint of selection and plan;
  after ``load_state_dict()`` iteration restarts exactly at that micro-batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lmm.common import plain
from lmm.data.batch import Batch, collate
from lmm.data.manifest import Manifest, epoch_items, select_rows
from lmm.data.mixture import StageMixture, mixture_from_cfg
from lmm.data.processor import SampleProcessor
from lmm.data.reader import SampleReader
from lmm.data.remote import is_url, join
from lmm.data.sampler import BatchPlan, plan_batches
from lmm.data.shards import FORMAT_VERSION, convert
from lmm.data.token_batches import plan_token_batches
from lmm.imaging import max_image_pixels
from lmm.text.tokenize import IMAGE_TOKEN_INDEX

log = logging.getLogger(__name__)


def _identity(x):
    return x


def _digest(obj: Any, n: int = 12) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=n).hexdigest()


class PlanDataset(IterableDataset):
    """Yields this rank's collated micro-batches from ``start``; worker ``w`` of ``W`` takes ``start+w, start+w+W…``.

    The epoch's plan is held as numpy arrays (``rows``: this rank's manifest rows, micro-batch after micro-batch;
    ``bounds``: where each micro-batch starts) over the columnar :class:`Manifest`, and an item's fields are read
    from the columns when its micro-batch is loaded: forked workers share these pages without ever writing to them."""

    def __init__(self, reader: SampleReader, pad_id: int, padding_side: str = "right"):
        self.reader, self.pad_id, self.padding_side = reader, pad_id, padding_side
        self.manifest: Manifest | None = None
        self.shard_paths: list[str] = []  # per shard code of the manifest
        self.rows, self.bounds = np.zeros(0, np.int64), np.zeros(1, np.int64)
        self.start = 0
        self.length = 0

    def set_plan(self, manifest: Manifest, shard_paths: list[str], batches: list[list[int]]) -> None:
        self.manifest, self.shard_paths = manifest, shard_paths
        self.rows = np.fromiter((i for mb in batches for i in mb), dtype=np.int64)
        self.bounds = np.zeros(len(batches) + 1, np.int64)
        np.cumsum([len(mb) for mb in batches], out=self.bounds[1:])

    @property
    def num_batches(self) -> int:
        return len(self.bounds) - 1

    def items(self, b: int) -> list[tuple]:
        """Micro-batch ``b``'s items ``(key, id, source, shard path, members)``, as :class:`SampleReader` takes them."""
        m = self.manifest
        return [(m.keys[i], m.ids[i], m.sources[i], self.shard_paths[m.shards.codes[i]], m.members[i])
                for i in self.rows[self.bounds[b]:self.bounds[b + 1]].tolist()]

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        info = get_worker_info()
        w, n = (info.id, info.num_workers) if info is not None else (0, 1)
        try:
            for b in range(self.start + w, self.num_batches, n):
                items = self.items(b)
                self.reader.prefetch(items)
                yield collate([self.reader(item) for item in items], self.pad_id, self.padding_side)
        finally:
            self.reader.close()


class PlanLoader(DataLoader):
    """Starts each epoch at the data module's plan position and tallies what it yields; resumable through the data
    module, to which ``state_dict`` / ``load_state_dict`` delegate (so Lightning sees a resumable loader)."""

    def __init__(self, datamodule: ShardDataModule, dataset: PlanDataset, num_workers: int = 0):
        super().__init__(dataset, batch_size=None, collate_fn=_identity, num_workers=num_workers,
                         persistent_workers=False)
        self.datamodule = datamodule

    def __iter__(self):
        self.datamodule._begin_epoch()
        return self.datamodule._tally(super().__iter__())

    def state_dict(self) -> dict:
        return self.datamodule.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.datamodule.load_state_dict(state)


class ShardDataModule(L.LightningDataModule):
    def __init__(self, mixture: StageMixture, processor: SampleProcessor, micro_batch_size: int, grad_accum: int,
                 pad_id: int, seed: int, *, stage_name: str = "train", num_workers: int = 0, on_error: str = "skip",
                 padding_side: str = "right", num_image_tokens: int | None = None, max_length: int | None = None,
                 cache_dir: str | Path | None = None, check_counts: bool = True, rank: int | None = None,
                 world_size: int | None = None, micro_batch_tokens: int | None = None, packed: bool = False,
                 tokens_per_word: float = 1.5):
        super().__init__()
        self.mixture, self.stage_name, self.seed = mixture, stage_name, seed
        self.micro_batch_size, self.grad_accum, self.num_workers = micro_batch_size, grad_accum, num_workers
        self.num_image_tokens, self.max_length, self.check_counts = num_image_tokens, max_length, check_counts
        # A token budget per micro-batch instead of micro_batch_size samples (lmm.data.token_batches); its cost
        # counts packed (sum of lengths) or padded (count × longest) tokens, as the model will run them.
        self.micro_batch_tokens, self.packed, self.tokens_per_word = micro_batch_tokens, packed, tokens_per_word
        if micro_batch_tokens is not None and num_image_tokens is None:
            raise ValueError("micro_batch_tokens needs num_image_tokens (the image tokens a sample's length includes)")
        policy = mixture.policy()
        if policy is not None and processor.prompt_policy is not None:
            inner, outer = policy, processor.prompt_policy
            policy = lambda r: outer(inner(r))  # noqa: E731
        self.processor = SampleProcessor(processor.tokenizer, processor.template, processor.image_transform,
                                         policy or processor.prompt_policy)
        self.dataset = PlanDataset(SampleReader(self.processor, on_error), pad_id, padding_side)
        self.cache_dir = Path(cache_dir or Path.home() / ".cache" / "lmm")
        # a local folder, or a URL (lmm.data.remote) kept as a string
        self._shard_dir = (mixture.shards if is_url(mixture.shards) else Path(mixture.shards)) if mixture.shards else None
        self._rank, self._world = rank, world_size
        self.manifest: Manifest | None = None
        self.selected: list[int] = []  # manifest rows of the mixture (include / subsample)
        self._plans: dict[int, BatchPlan] = {}
        self._epoch, self._start, self._iterated, self._next_epoch = 0, 0, False, None
        self._tallies: list[tuple] = []
        self._done = Counter()  # progress of finished epochs (and restored from a checkpoint)
        self._resume: tuple[int, int] | None = None  # (data epoch, micro-batch) restored from a checkpoint
        self._fingerprint = ""
        self.setup_seconds: dict[str, float] = {}  # manifest load, selection + plan

    @property
    def shard_dir(self) -> Path | str:
        """The configured shard folder, or the cache folder of an on-demand conversion: named by a hash of the
        source JSON (path, size, mtime), the image folder and the conversion options (source rules, shard size,
        verification, the converter's format and the image pixel limit) — nothing of the model (tokenizer,
        template, image tokens, max_length): one conversion of a data set serves every experiment; token lengths are
        counted at load time."""
        if self._shard_dir is not None:
            return self._shard_dir
        m, src = self.mixture, Path(self.mixture.json)
        stat = src.stat() if src.is_file() else None
        key = [str(src.resolve()), stat and stat.st_size, stat and stat.st_mtime_ns, m.image_folder, m.rules,
               m.unknown_source, m.shard_size, m.verify_images, FORMAT_VERSION, max_image_pixels()]
        folder = self.cache_dir / "shards" / f"{self.stage_name}-{_digest(key, 6)}"
        if stat is not None:  # before the JSON exists (a twin not yet written) the name is provisional
            self._shard_dir = folder
        return folder

    def prepare_data(self) -> None:
        """Convert the stage's JSON into shards (idempotent)."""
        if self.mixture.shards:
            return
        m = self.mixture
        convert(m.json, m.image_folder, self.shard_dir, workers=m.convert_workers, shard_size=m.shard_size,
                rules=m.rules, unknown_source=m.unknown_source, verify_images=m.verify_images, echo=log.info)

    def setup(self, stage: str | None = None) -> None:
        if self.manifest is not None:
            return
        if self.trainer is not None:
            self._rank = self.trainer.global_rank if self._rank is None else self._rank
            self._world = self.trainer.world_size if self._world is None else self._world
        self._rank, self._world = self._rank or 0, self._world or 1
        if self.trainer is None and not is_url(self.shard_dir) and not (self.shard_dir / "manifest.jsonl").is_file():
            self.prepare_data()
        t0 = time.perf_counter()
        self.manifest = man = Manifest.load(self.shard_dir)
        t1 = time.perf_counter()
        m = self.mixture
        self.selected = select_rows(man, m.subsample, m.subsample_map(), m.include_map(), m.subsample_seed,
                                    m.default_include)
        sizes = man.source_counts()
        for s, spec in m.sources.items():
            if self.check_counts and spec.include and spec.count is not None and sizes.get(s, 0) != spec.count:
                log.warning("source %s: %d samples in %s, the mixture table says %d", s, sizes.get(s, 0),
                            self.shard_dir, spec.count)
        plan = self.plan(0)
        if plan.micro_batches_per_rank == 0:
            raise ValueError(f"{len(self.selected)} selected sample(s) in {self.shard_dir} make no batch for "
                             f"{self._world} rank(s); select more data")
        self.dataset.length = plan.micro_batches_per_rank
        self._fingerprint = _digest([[man.keys[i] for i in self.selected], self.micro_batch_size, self._world,
                                     self.grad_accum, self.seed, m.group_by_modality_length, m.weight_map()]
                                    + ([self.micro_batch_tokens, self.packed, self.tokens_per_word]
                                       if self.micro_batch_tokens else []))
        self.setup_seconds = {"manifest": t1 - t0, "plan": time.perf_counter() - t1}
        log.info("%s: %d of %d samples selected (%s); %d micro-batches per rank per epoch on %d rank(s); manifest "
                 "loaded in %.1f s, selected and planned in %.1f s", self.stage_name, len(self.selected), len(man),
                 dict(man.source_counts(self.selected)), plan.micro_batches_per_rank, self._world,
                 self.setup_seconds["manifest"], self.setup_seconds["plan"])

    def plan(self, epoch: int) -> BatchPlan:
        """The epoch's batch plan over :meth:`epoch_rows` (cached); identical on every rank."""
        if epoch not in self._plans:
            rows = self.epoch_rows(epoch)
            gen = torch.Generator().manual_seed(int(_digest([self.seed, epoch], 7), 16))
            lengths, grouped = self.manifest.modality_lengths(rows), self.mixture.group_by_modality_length
            if self.micro_batch_tokens:
                tokens = self.manifest.token_lengths(rows, self.num_image_tokens, self.max_length,
                                                     self.tokens_per_word)
                plan = plan_token_batches(lengths, tokens, self.micro_batch_tokens, self._world, self.grad_accum,
                                          gen, grouped, self.packed)
            else:
                plan = plan_batches(lengths, self.micro_batch_size, self._world, self.grad_accum, gen, grouped)
            self._plans = {epoch: plan}
        return self._plans[epoch]

    def epoch_rows(self, epoch: int) -> list[int]:  # the selection, with source weights applied
        return epoch_items(self.manifest, self.selected, self.mixture.weight_map(), self.seed, epoch)

    def rank_rows(self, epoch: int, rank: int | None = None) -> list[list[int]]:
        """Manifest rows of each micro-batch of ``rank`` (default: this rank) in ``epoch``."""
        rows = self.epoch_rows(epoch)
        return [[rows[i] for i in mb] for mb in self.plan(epoch).rank_batches(self._rank if rank is None else rank)]

    @property
    def micro_batches_per_epoch(self) -> int:
        """This rank's micro-batches in an epoch (after ``setup``), known without iterating the loader."""
        self.setup("fit")
        return len(self.dataset)

    def train_dataloader(self) -> PlanLoader:
        return PlanLoader(self, self.dataset, self.num_workers)

    def set_epoch(self, epoch: int) -> None:
        """Iterate data epoch ``epoch`` next (by default epochs follow one another from 0)."""
        self._next_epoch = epoch

    def _begin_epoch(self) -> None:
        """Data epoch and start: a restored position, else :meth:`set_epoch`'s, else the next epoch. (Lightning's
        epoch counter moves on when ``max_steps`` stops a run mid-epoch; the data position must not.)"""
        self.setup("fit")
        self._done.update(self._progress(self._tallies))  # the previous iteration is over
        if self._resume is not None:
            (epoch, start), self._resume = self._resume, None
        elif self._next_epoch is not None:
            epoch, start, self._next_epoch = self._next_epoch, 0, None
        else:
            epoch, start = (self._epoch + 1 if self._iterated else 0), 0
        if start >= self.plan(epoch).micro_batches_per_rank:
            epoch, start = epoch + 1, 0
        shards = [join(self.shard_dir, s) for s in self.manifest.shards.names]
        self.dataset.set_plan(self.manifest, shards, self.rank_rows(epoch))
        self.dataset.start, self._epoch, self._start, self._tallies, self._iterated = start, epoch, start, [], True
        self.dataset.length = self.dataset.num_batches  # constant unless a fractional weight changes modalities

    def _tally(self, batches):  # runs in the main process, on what the loader yields
        try:
            for batch in batches:
                self._tallies.append(self._batch_counts(batch))
                if self._start + len(self._tallies) == self.dataset.num_batches:
                    self._log_epoch()
                yield batch
        finally:
            if hasattr(batches, "_shutdown_workers"):
                batches._shutdown_workers()

    def _batch_counts(self, batch: Batch) -> tuple:
        over = 0
        if self.num_image_tokens is not None and self.max_length is not None and len(batch):
            markers = (batch.input_ids == IMAGE_TOKEN_INDEX).sum(1)
            spliced = batch.attention_mask.sum(1) + markers * (self.num_image_tokens - 1)
            over = int((spliced > self.max_length).sum())
        return len(batch), Counter(batch.skipped), over

    @staticmethod
    def _progress(tallies: list[tuple]) -> Counter:
        c = Counter()
        for n, skipped, over in tallies:
            c["planned"] += n + sum(skipped.values())
            c["trained"] += n
            c["over_length"] += over
            for reason, k in skipped.items():
                c[f"skipped_{reason}"] += k
        return c

    def _log_epoch(self) -> None:  # every planned micro-batch of the epoch is loaded
        c = self._progress(self._tallies)
        skipped = {k[8:]: v for k, v in c.items() if k.startswith("skipped_")}
        log.info("%s epoch %d rank %d/%d%s: planned %d = trained %d + skipped %d%s; over max_length %d; "
                 "dropped by the plan (all ranks) %d", self.stage_name, self._epoch, self._rank, self._world,
                 f" (from micro-batch {self._start})" if self._start else "", c["planned"], c["trained"],
                 sum(skipped.values()), f" {dict(skipped)}" if skipped else "", c["over_length"],
                 len(self.plan(self._epoch).dropped))

    def _position(self) -> tuple[int, int]:
        """(data epoch, micro-batches of it trained). Under a trainer, what its loop has *processed* (it prefetches
        one batch ahead); before Lightning resets its counter for a new epoch, as many as were loaded."""
        loaded = self._start + len(self._tallies)
        try:
            processed = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        except AttributeError:  # no trainer (or no fit loop)
            return self._epoch, loaded
        return self._epoch, processed if self._start <= processed <= loaded else loaded

    def state_dict(self) -> dict[str, Any]:
        epoch, position = self._position()
        progress = self._done + self._progress(self._tallies[: position - self._start])
        return {"version": 1, "fingerprint": self._fingerprint, "epoch": epoch, "position": position,
                "progress": dict(progress)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if state.get("version") != 1:
            raise ValueError(f"unknown data state version {state.get('version')!r}")
        self.setup("fit")
        if state["fingerprint"] != self._fingerprint:
            raise ValueError("the checkpoint's data position belongs to another selection or batch plan (data, "
                             "mixture, seed, micro batch, ranks or accumulation changed): resuming would repeat or "
                             "skip samples")
        self._resume = (int(state["epoch"]), int(state["position"]))
        self._done = Counter(state.get("progress", {}))
        self._tallies, self._start = [], 0

    def counts(self, all_ranks: bool = False) -> dict[str, float]:
        """Conversion, selection and loading counts (``data/...``) for MLflow. Loading counts (planned, trained,
        skipped_*, over_length) are this rank's; ``all_ranks=True`` sums them over the ranks — a collective call,
        to be made on every rank."""
        man = self.manifest
        rep = man.report if man is not None else {}
        out: dict[str, float] = {}
        progress = self._done + self._progress(self._tallies)
        if all_ranks and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[dict] = [{} for _ in range(torch.distributed.get_world_size())]
            torch.distributed.all_gather_object(gathered, dict(progress))
            progress = sum((Counter(g) for g in gathered), Counter())
        if rep:
            out.update({"data/records_in": rep["records_in"], "data/converted": rep["converted"],
                        "data/rejected": rep["rejected"], "data/empty_shards": len(rep.get("empty_shards", []))})
            out.update({f"data/rejected_{r}": n for r, n in rep.get("rejected_by_reason", {}).items()})
        if man is not None:
            out["data/selected"] = len(self.selected)
            out.update({f"data/selected_{s}": n for s, n in man.source_counts(self.selected).items()})
        out.update({f"data/{k}": progress.get(k, 0) for k in ("planned", "trained", "over_length", *progress)})
        if self._plans:
            out["data/dropped_by_plan_per_epoch"] = len(self.plan(self._epoch).dropped)
        out["data/skipped"] = sum(v for k, v in progress.items() if k.startswith("skipped_"))
        return {k: float(v) for k, v in out.items()}


def build_datamodule(data_cfg: Any, stage_name: str, processor: SampleProcessor, micro_batch_size: int,
                     grad_accum: int, pad_id: int, seed: int, *, num_image_tokens: int | None = None,
                     max_length: int | None = None, padding_side: str = "right", num_workers: int | None = None,
                     rank: int | None = None, world_size: int | None = None, micro_batch_tokens: int | None = None,
                     packed: bool = False) -> ShardDataModule:
    """The data module of stage ``stage_name`` from the Hydra ``data`` node (see ``conf/data/*shards*.yaml``).

    ``data_cfg[stage_name]`` is the stage's mixture (:func:`lmm.data.mixture.mixture_from_cfg`); top-level keys:
    ``num_workers``, ``on_error`` (skip | raise), ``shard_cache`` (where on-demand conversions go) and, with
    ``twin.enabled`` (the data are a synthetic twin: the mixture table's counts are not checked).
    ``num_image_tokens`` + ``max_length`` enable the over-length count (text tokens + image tokens after the splice).
    ``micro_batch_tokens`` plans micro-batches by a token budget (:mod:`lmm.data.token_batches`; lengths from the
    manifest's token counts, else ``words × data.tokens_per_word``), ``packed`` says how their tokens are counted.
    Rank and world size come from the trainer unless given."""
    cfg = plain(data_cfg)
    if stage_name not in cfg:
        raise ValueError(f"the data config has no stage {stage_name!r}; it has {sorted(k for k in cfg)}")
    return ShardDataModule(
        mixture_from_cfg(cfg[stage_name]), processor, micro_batch_size, grad_accum, pad_id, seed,
        stage_name=stage_name, num_workers=cfg.get("num_workers", 0) if num_workers is None else num_workers,
        on_error=cfg.get("on_error", "skip"), padding_side=padding_side, num_image_tokens=num_image_tokens,
        max_length=max_length, cache_dir=cfg.get("shard_cache"),
        check_counts=not (cfg.get("twin") or {}).get("enabled"), rank=rank, world_size=world_size,
        micro_batch_tokens=micro_batch_tokens, packed=packed, tokens_per_word=float(cfg.get("tokens_per_word", 1.5)))
