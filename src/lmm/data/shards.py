"""LLaVA-format JSON + an image folder → WebDataset tar shards, a manifest and a conversion report.

    python -m lmm.data.shards --json llava_v1_5_mix665k.json --image-folder playground/data --out shards/mix665k \\
        --workers 8 --shard-size 1000 --source-rules llava_mix665k

Every record is judged by :func:`lmm.data.records.parse_record` and tagged with its source
(:mod:`lmm.data.sources`); its images are read (and, by default, fully decoded) so that missing or corrupt ones are
rejected here with the sample id and reason. Shard ``k`` holds the valid records ``[k·S, (k+1)·S)`` — the layout
depends on the input and ``--shard-size`` only, never on ``--workers``, and tars are byte-reproducible. A shard is
finished when its part file ``shard-k.json`` exists (written after the tar): a re-run skips finished shards, and
does no work at all when the report is there and the inputs and options are unchanged.

A sample is the WebDataset key ``<9-digit index>`` with ``json`` = ``{"id", "source", "images": [member exts],
"record": <the raw LLaVA record>}`` and one member per image holding the original file bytes (``jpg``/``png``/...;
``0.jpg``, ``1.jpg``... when there are several). Non-RGB images (CMYK, palette, RGBA, 16-bit grey) are kept as they
are and converted to RGB when loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import multiprocessing as mp
import os
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image, ImageFile

from lmm.data.images import ImageLoadError, to_rgb
from lmm.data.manifest import MANIFEST_NAME, REPORT_NAME, write_manifest
from lmm.data.records import Record, RecordError, parse_record, read_records
from lmm.data.sources import SourceTagger

FORMAT_VERSION = 1
CONFIG_NAME = "convert.json"


def shard_name(k: int) -> str:
    return f"shard-{k:06d}.tar"


def part_name(k: int) -> str:
    return f"shard-{k:06d}.json"


def _done(out: Path, k: int) -> bool:
    return (out / part_name(k)).is_file() and (out / shard_name(k)).is_file()


def decode_image(data: bytes, name: str = "") -> Image.Image:
    """Fully decode image bytes as 8-bit RGB (as :func:`lmm.data.images.load_image` does for files)."""
    prev = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return to_rgb(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageLoadError("corrupt_image", f"{name}: {e}") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = prev


def _image_exts(paths: list[str]) -> list[str]:
    exts = []
    for p in paths:
        ext = Path(p).suffix.lower().lstrip(".").replace("jpeg", "jpg") or "img"
        exts.append(ext if len(paths) == 1 else f"{len(exts)}.{ext}")
    return exts


def _token_length(record: Record, tokenizer, template) -> int:
    from lmm.text.tokenize import tokenize_conversation

    turns = record.turns[:1] if template.style == "plain" else record.turns
    return len(tokenize_conversation(turns, template, tokenizer).input_ids)


_WORKER: dict[str, Any] = {}


def _init_worker(options: dict) -> None:
    _WORKER.clear()
    _WORKER.update(options)


def _write_shard(job: tuple[int, list[tuple[str, dict, str]]]) -> dict:
    """Write shard ``k`` from its ``(key, raw record, source)`` entries; returns (and stores) its part file."""
    import webdataset as wds

    k, entries = job
    opt = _WORKER
    out, folder = Path(opt["out"]), Path(opt["image_folder"]) if opt["image_folder"] else None
    name = shard_name(k)
    rows, rejected, over_length = [], [], []
    inside = os.path.join(os.path.realpath(folder), "") if folder is not None else ""
    tmp = out / f"{name}.tmp{os.getpid()}"
    with wds.TarWriter(str(tmp), mtime=0) as sink:
        for key, raw, source in entries:
            record = parse_record(raw)
            try:
                blobs = []
                for rel in record.images:
                    if folder is not None and not os.path.realpath(folder / rel).startswith(inside):
                        raise ImageLoadError("unsafe_image_path", f"{folder / rel} resolves outside {folder} (a link)")
                    if folder is None or not (folder / rel).is_file():
                        raise ImageLoadError("missing_image", f"no file at {folder / rel if folder else rel}")
                    try:
                        data = (folder / rel).read_bytes()
                    except OSError as e:
                        raise ImageLoadError("unreadable_image", f"{folder / rel}: {e}") from None
                    if opt["verify_images"]:
                        decode_image(data, rel)
                    blobs.append(data)
            except ImageLoadError as e:
                rejected.append({"id": record.id, "reason": e.reason, "detail": e.detail, "key": key})
                continue
            exts = _image_exts(record.images)
            sample = {"__key__": key, "json": json.dumps({"id": record.id, "source": source, "images": exts,
                                                          "record": raw}, ensure_ascii=False).encode("utf-8")}
            sample.update(zip(exts, blobs))
            sink.write(sample)
            tokens = _token_length(record, opt["tokenizer"], opt["template"]) if opt["tokenizer"] else -1
            rows.append({"key": key, "id": record.id, "source": source, "has_image": record.has_image,
                         "n_images": len(record.images), "words": record.word_length(), "tokens": tokens,
                         "shard": name, "position": len(rows)})
            n_img = len(record.images)
            if tokens >= 0 and opt["max_length"] and tokens - n_img + n_img * opt["image_tokens"] > opt["max_length"]:
                over_length.append(record.id)
    members: dict[str, dict[str, list[int]]] = {}
    with tarfile.open(tmp) as tar:
        for info in tar:
            key, _, ext = info.name.partition(".")
            members.setdefault(key, {})[ext] = [info.offset_data, info.size]
    for row in rows:
        row["members"] = members[row["key"]]
    tmp.replace(out / name)
    part = {"shard": name, "index": k, "n_in": len(entries), "rows": rows, "rejected": rejected,
            "over_length": over_length}
    part_tmp = out / f"{part_name(k)}.tmp{os.getpid()}"
    part_tmp.write_text(json.dumps(part, ensure_ascii=False))
    part_tmp.replace(out / part_name(k))
    return part


def _fingerprint(json_path: Path, options: dict) -> dict:
    st = json_path.stat()
    fp = {"format": FORMAT_VERSION, "json": str(json_path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
          **options}
    return json.loads(json.dumps(fp, default=lambda o: dataclasses.asdict(o) if dataclasses.is_dataclass(o) else str(o)))


def convert(json_path: str | Path, image_folder: str | Path | None, out: str | Path, *, workers: int = 1,
            shard_size: int = 1000, rules: Any = "llava_mix665k", unknown_source: str = "reject",
            tokenizer=None, template=None, verify_images: bool = True, num_image_tokens: int | None = None,
            max_length: int | None = None, force: bool = False, echo=print) -> dict:
    """Convert (idempotently) and return the report; see the module docstring. ``template`` is a
    :class:`~lmm.text.templates.Template` (or its name) used with ``tokenizer`` for the manifest's token counts."""
    from lmm.text.templates import get_template

    t0 = time.perf_counter()
    json_path, out = Path(json_path), Path(out)
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if isinstance(template, str):
        template = get_template(template)
    if tokenizer is not None and template is None:
        raise ValueError("token counts need the stage's template along with the tokenizer")
    options = {"image_folder": str(Path(image_folder).resolve()) if image_folder else None, "shard_size": shard_size,
               "rules": rules, "unknown_source": unknown_source, "verify_images": verify_images,
               "tokenizer": getattr(tokenizer, "name_or_path", None) if tokenizer is not None else None,
               "vocab": len(tokenizer) if tokenizer is not None else None,
               "template": template.name if template is not None else None,
               "image_tokens": num_image_tokens, "max_length": max_length}
    fp = _fingerprint(json_path, options)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path, report_path = out / CONFIG_NAME, out / REPORT_NAME
    if cfg_path.is_file() and not force:
        old = json.loads(cfg_path.read_text())
        if old != fp:
            changed = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
            raise ValueError(f"{out} holds a conversion with other inputs or options ({', '.join(changed)}); use a new "
                             f"--out folder, or --force to redo it")
        if report_path.is_file():
            report = json.loads(report_path.read_text())
            if all(_done(out, k) for k in range(report["shards"])):
                report.update(written_shards=0, skipped_shards=report["shards"])
                echo(format_report(report, out))
                return report
    if force:
        for p in out.glob("shard-*"):
            p.unlink()
    cfg_path.write_text(json.dumps(fp, indent=1))

    records, parse_rejected = read_records(json_path)
    tagger = SourceTagger(rules, unknown_source)
    rejected = [{"id": e.sample_id, "reason": e.reason, "detail": e.detail} for e in parse_rejected]
    entries: list[tuple[str, dict, str]] = []
    for rec in records:
        try:
            entries.append((f"{len(entries):09d}", rec.raw, tagger(rec)))
        except RecordError as e:
            rejected.append({"id": e.sample_id, "reason": e.reason, "detail": e.detail})
    jobs = [(k, entries[s:s + shard_size]) for k, s in enumerate(range(0, len(entries), shard_size))]
    todo = [job for job in jobs if not _done(out, job[0])]
    worker_opts = {"out": str(out), "image_folder": options["image_folder"], "verify_images": verify_images,
                   "tokenizer": tokenizer, "template": template, "image_tokens": num_image_tokens or 0,
                   "max_length": max_length}
    if workers > 1 and len(todo) > 1:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(min(workers, len(todo)), _init_worker, (worker_opts,)) as pool:
            for _ in pool.imap_unordered(_write_shard, todo):
                pass
    else:
        _init_worker(worker_opts)
        for job in todo:
            _write_shard(job)
        _WORKER.clear()
    parts = [json.loads((out / part_name(k)).read_text()) for k, _ in jobs]
    rows = [row for part in parts for row in part["rows"]]
    rejected += [r for part in parts for r in part["rejected"]]
    write_manifest(out / MANIFEST_NAME, rows)
    report = {
        "json": str(json_path), "out": str(out), "records_in": len(records) + len(parse_rejected),
        "converted": len(rows), "rejected": len(rejected), "shards": len(jobs),
        "written_shards": len(todo), "skipped_shards": len(jobs) - len(todo),
        "empty_shards": [p["shard"] for p in parts if not p["rows"]],
        "per_source": dict(sorted(Counter(r["source"] for r in rows).items())),
        "rejected_by_reason": dict(sorted(Counter(r["reason"] for r in rejected).items())),
        "normalised": dict(sorted(Counter(n for r in records for n in r.normalised).items())),
        "rejected_samples": rejected,
        "over_length": [i for p in parts for i in p["over_length"]],
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if report["records_in"] != report["converted"] + report["rejected"]:  # pragma: no cover - an internal bug
        raise RuntimeError(f"conversion lost samples: {report['records_in']} in, {report['converted']} out, "
                           f"{report['rejected']} rejected")
    tmp = report_path.with_name(REPORT_NAME + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    tmp.replace(report_path)
    echo(format_report(report, out))
    return report


def format_report(report: dict, out: str | Path, max_listed: int = 50) -> str:
    lines = [f"converted {report['converted']} of {report['records_in']} records into {report['shards']} shard(s) "
             f"in {out} ({report['written_shards']} written, {report['skipped_shards']} already done)"]
    lines.append("  per source: " + (", ".join(f"{s} {n}" for s, n in report["per_source"].items()) or "none"))
    if report["empty_shards"]:
        lines.append(f"  empty shards: {len(report['empty_shards'])} ({', '.join(report['empty_shards'][:10])})")
    if report["over_length"]:
        lines.append(f"  longer than max_length after the image splice (kept, truncated in training): "
                     f"{len(report['over_length'])}: {report['over_length'][:10]}")
    if report.get("normalised"):
        lines.append("  normalised as LLaVA's preprocess (kept): "
                     + ", ".join(f"{r} {n}" for r, n in report["normalised"].items()))
    lines.append(f"  rejected {report['rejected']}: "
                 + (", ".join(f"{r} {n}" for r, n in report["rejected_by_reason"].items()) or "none"))
    for r in report["rejected_samples"][:max_listed]:
        lines.append(f"    {r['id']!r}: {r['reason']}" + (f" ({r['detail']})" if r.get("detail") else ""))
    if len(report["rejected_samples"]) > max_listed:
        lines.append(f"    ... {len(report['rejected_samples']) - max_listed} more in {Path(out) / REPORT_NAME}")
    lines.append(f"  in {report['records_in']} = out {report['converted']} + rejected {report['rejected']}")
    return "\n".join(lines)


def read_member(shard_path: str | Path, span: list[int], handles: dict | None = None) -> bytes:
    """Read one tar member's bytes by its ``[offset, size]`` (manifest ``members``); ``handles`` caches open files."""
    if handles is None:
        with open(shard_path, "rb") as f:
            f.seek(span[0])
            return f.read(span[1])
    fd = handles.get(shard_path)
    if fd is None:
        if len(handles) >= 64:
            os.close(handles.pop(next(iter(handles))))
        fd = handles[shard_path] = os.open(shard_path, os.O_RDONLY)
    data = os.pread(fd, span[1], span[0])
    if len(data) != span[1]:
        raise OSError(f"{shard_path}: short read at offset {span[0]} ({len(data)} of {span[1]} bytes)")
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lmm.data.shards", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True, help="LLaVA-format JSON list (or JSONL)")
    p.add_argument("--image-folder", default=None, help="folder the records' image paths are relative to")
    p.add_argument("--out", required=True, help="output folder for shards, manifest.jsonl and report.json")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--shard-size", type=int, default=1000, help="records per shard")
    p.add_argument("--source-rules", default="llava_mix665k",
                   help="built-in rule set (llava_mix665k, lcs558k, synthetic) or a YAML/JSON file of rules")
    p.add_argument("--unknown-source", choices=("reject", "tag"), default="reject")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder, for token counts in the manifest")
    p.add_argument("--template", default=None, help="conversation template for token counts (vicuna_v1, plain)")
    p.add_argument("--max-length", type=int, default=None, help="report samples longer than this after the splice")
    p.add_argument("--image-tokens", type=int, default=None, help="tokens per image (576 for CLIP-L/14 at 336 px)")
    p.add_argument("--no-verify-images", action="store_true", help="store image bytes without decoding them")
    p.add_argument("--force", action="store_true", help="redo the conversion from scratch")
    a = p.parse_args(argv)
    tok = None
    if a.tokenizer:
        from lmm.text.tokenizer import load_tokenizer

        tok = load_tokenizer(a.tokenizer)
    convert(a.json, a.image_folder, a.out, workers=a.workers, shard_size=a.shard_size, rules=a.source_rules,
            unknown_source=a.unknown_source, tokenizer=tok, template=a.template, verify_images=not a.no_verify_images,
            num_image_tokens=a.image_tokens, max_length=a.max_length, force=a.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
