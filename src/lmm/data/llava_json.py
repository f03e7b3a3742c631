"""Map-style reader for LLaVA-format JSON + an image folder (LLaVA's ``LazySupervisedDataset``, validated).

Records are judged once, when the file is read: invalid ones are rejected with their id and reason (``report``).
Images are opened lazily; one that is missing or cannot be decoded gives a :class:`Skipped` item (counted by the
collate function and logged by the training module) or, with ``on_error="raise"``, a clear error naming the sample.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from torch.utils.data import Dataset

from lmm.data.batch import Example, Skipped
from lmm.data.images import ImageLoadError, load_image
from lmm.data.processor import SampleProcessor
from lmm.data.records import Record, RecordError, parse_record

log = logging.getLogger(__name__)


def read_records(json_path: str | Path) -> tuple[list[Record], list[RecordError]]:
    """Parse a LLaVA JSON list (or JSONL) into valid records and the errors of the rejected ones."""
    path = Path(json_path)
    text = path.read_text(encoding="utf-8")
    rejected: list[RecordError] = []
    if path.suffix == ".jsonl":
        raw = []
        for n, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                raw.append(json.loads(line))
            except json.JSONDecodeError as e:
                rejected.append(RecordError(f"line {n + 1}", "malformed_json", str(e)))
    else:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(raw, list):
            raise ValueError(f"{path} must hold a JSON list of LLaVA records")
    records: list[Record] = []
    for i, r in enumerate(raw):
        try:
            records.append(parse_record(r, i))
        except RecordError as e:
            rejected.append(e)
    return records, rejected


class LlavaJsonDataset(Dataset):
    def __init__(self, json_path: str | Path, image_folder: str | Path | None, processor: SampleProcessor,
                 on_error: str = "skip", source: str = ""):
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.records, self.rejected = read_records(json_path)
        self.image_folder = Path(image_folder) if image_folder else None
        self.processor, self.on_error, self.source = processor, on_error, source
        if self.rejected:
            msg = "; ".join(str(e) for e in self.rejected[:20])
            if on_error == "raise":
                raise RecordError(self.rejected[0].sample_id, self.rejected[0].reason,
                                  f"{len(self.rejected)} invalid record(s) in {json_path}: {msg}")
            for e in self.rejected:
                log.warning("rejected %s", e)

    @property
    def rejected_counts(self) -> Counter:
        return Counter(e.reason for e in self.rejected)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Example | Skipped:
        rec = self.records[i]
        try:
            if rec.images and self.image_folder is None:
                raise RecordError(rec.id, "missing_image", "the record has an image but no image folder is set")
            images = []
            for rel in rec.images:
                try:
                    images.append(load_image(self.image_folder / rel))
                except ImageLoadError as e:
                    raise RecordError(rec.id, e.reason, e.detail) from None
            return self.processor(rec, images, self.source)
        except RecordError as e:
            if self.on_error == "raise":
                raise
            log.warning("skipped %s", e)
            return Skipped(rec.id, e.reason, e.detail)
