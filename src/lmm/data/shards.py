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

Nothing a record names can make a member that a reader of the shards would run: an image's extension must be one of
:data:`lmm.data.images.IMAGE_EXTENSIONS` (a file without one is named by its content), else the record is rejected
(``unsupported_image_extension``) — a plain ``wds.WebDataset(...).decode()`` of our shards sees ``json`` and images
only, never a pickle. Every image read obeys the one pixel limit (:func:`lmm.imaging.max_image_pixels`, part of the
fingerprint). ``force`` never loses a good conversion: the input is read first, the new conversion is built in a
fresh sibling folder, and only once it is complete does it replace the old folder (which must hold the converter's
files only).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import re
import sys
import tarfile
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from lmm.common import UnsafePathError, inside, open_regular, replacing_folder
from lmm.data.images import (
    FORMAT_NAMES,
    IMAGE_EXTENSIONS,
    ImageLoadError,
    decode_image,  # also lmm.data.shards.decode_image, as the loader imports it
    image_format,
    read_image_file,
)
from lmm.data.manifest import MANIFEST_NAME, REPORT_NAME, write_manifest
from lmm.data.records import Record, RecordError, parse_record, printable, read_records
from lmm.data.sources import SourceTagger
from lmm.imaging import max_image_pixels

FORMAT_VERSION = 2  # 2: image members only with image extensions; the pixel limit in the fingerprint
CONFIG_NAME = "convert.json"
# What the converter writes in its --out folder (a forced re-conversion replaces a folder holding only these).
OWN_FILES = re.compile(r"(shard-\d{6}\.(tar|json)|manifest\.jsonl|report\.json|convert\.json)(\.tmp\d*)?")


def shard_name(k: int) -> str:
    return f"shard-{k:06d}.tar"


def part_name(k: int) -> str:
    return f"shard-{k:06d}.json"


def _done(out: Path, k: int) -> bool:
    return (out / part_name(k)).is_file() and (out / shard_name(k)).is_file()


def _member_ext(rel: str) -> str:
    """The member extension of image ``rel`` from its name (``jpeg`` → ``jpg``), "" without one; refused
    (``unsupported_image_extension``) unless it is an image extension."""
    ext = os.path.splitext(os.path.basename(rel))[1].lower().lstrip(".")
    if ext and ext not in IMAGE_EXTENSIONS:
        raise ImageLoadError("unsupported_image_extension", f"{rel}: {ext!r} is not an image extension "
                                                            f"({', '.join(IMAGE_EXTENSIONS)})")
    return "jpg" if ext == "jpeg" else ext


def _read_images(folder: Path | None, images: list[str], verify: bool) -> list[tuple[str, bytes]]:
    """``(member name, file bytes)`` of a record's images, or :class:`ImageLoadError` with the reason."""
    members = []
    for rel in images:
        ext = _member_ext(rel)
        if folder is None:
            raise ImageLoadError("missing_image", f"no file at {rel} (no image folder)")
        try:
            path = inside(folder, rel)
        except UnsafePathError as e:
            raise ImageLoadError("unsafe_image_path", str(e)) from None
        data = read_image_file(path)
        ext = ext or image_format(data) or ""
        if not ext:
            raise ImageLoadError("unsupported_image_extension", f"{rel}: no extension, and not a {FORMAT_NAMES} image")
        if verify:
            decode_image(data, rel)
        members.append((ext if len(images) == 1 else f"{len(members)}.{ext}", data))
    return members


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
    tmp = out / f"{name}.tmp{os.getpid()}"
    with wds.TarWriter(str(tmp), mtime=0) as sink:
        for key, raw, source in entries:
            record = parse_record(raw)
            try:
                images = _read_images(folder, record.images, opt["verify_images"])
                meta = json.dumps({"id": record.id, "source": source, "images": [e for e, _ in images],
                                   "record": raw}, ensure_ascii=False)
                try:
                    meta_bytes = meta.encode("utf-8")
                except UnicodeEncodeError as e:  # a lone surrogate (a JSON escape such as \\ud83d): not text
                    raise RecordError(record.id, "invalid_utf8", f"a string holds "
                                      f"{printable(e.object[e.start:e.end])}, which is not Unicode text") from None
            except (ImageLoadError, RecordError) as e:
                rejected.append({"id": printable(record.id), "reason": e.reason, "detail": printable(e.detail),
                                 "key": key})
                continue
            sink.write({"__key__": key, "json": meta_bytes, **dict(images)})
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
    part_tmp.write_text(json.dumps(part, ensure_ascii=False), encoding="utf-8", errors="backslashreplace")
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
    :class:`~lmm.text.templates.Template` (or its name) used with ``tokenizer`` for the manifest's token counts.
    The input is read before anything is written: a JSON file that cannot be read or is not a JSON list raises,
    leaving ``out`` as it was. ``force`` redoes the conversion in a fresh sibling folder that replaces ``out`` only
    once it is complete (refused, before any work, when ``out`` holds files that are not the converter's)."""
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
               "max_image_pixels": max_image_pixels(),
               "tokenizer": getattr(tokenizer, "name_or_path", None) if tokenizer is not None else None,
               "vocab": len(tokenizer) if tokenizer is not None else None,
               "template": template.name if template is not None else None,
               "image_tokens": num_image_tokens, "max_length": max_length}
    fp = _fingerprint(json_path, options)
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
    replace = force and out.is_dir() and any(out.iterdir())
    if replace:
        foreign = sorted(p.name for p in out.iterdir() if not (p.is_file() and OWN_FILES.fullmatch(p.name)))
        if foreign:
            raise ValueError(f"--force replaces the whole folder {out}, which holds files that are not the "
                             f"converter's ({', '.join(foreign[:5])}); convert into an --out folder of its own")
    records, parse_rejected = read_records(json_path)  # a bad input fails here, before anything is written
    # --force: the new conversion is built beside the (resolved) folder and replaces it once complete
    with replacing_folder(out.resolve()) if replace else nullcontext(out) as work:
        work.mkdir(parents=True, exist_ok=True)
        (work / CONFIG_NAME).write_text(json.dumps(fp, indent=1))
        worker_opts = {"out": str(work), "image_folder": options["image_folder"], "verify_images": verify_images,
                       "tokenizer": tokenizer, "template": template, "image_tokens": num_image_tokens or 0,
                       "max_length": max_length}
        report = _convert_records(records, parse_rejected, SourceTagger(rules, unknown_source), work, shard_size,
                                  workers, worker_opts, json_path, out)
        report["seconds"] = round(time.perf_counter() - t0, 3)
        tmp = work / (REPORT_NAME + ".tmp")  # text that is not Unicode is written as its JSON escape
        tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8", errors="backslashreplace")
        tmp.replace(work / REPORT_NAME)
    echo(format_report(report, out))
    return report


def _convert_records(records: list[Record], parse_rejected: list[RecordError], tagger: SourceTagger, work: Path,
                     shard_size: int, workers: int, worker_opts: dict, json_path: Path, out: Path) -> dict:
    """Tag, write the missing shards of ``work``, the manifest and the report (named as ``out``); returns it."""
    rejected = [{"id": printable(e.sample_id), "reason": e.reason, "detail": printable(e.detail)}
                for e in parse_rejected]
    entries: list[tuple[str, dict, str]] = []
    for rec in records:
        try:
            entries.append((f"{len(entries):09d}", rec.raw, tagger(rec)))
        except RecordError as e:
            rejected.append({"id": printable(e.sample_id), "reason": e.reason, "detail": printable(e.detail)})
    jobs = [(k, entries[s:s + shard_size]) for k, s in enumerate(range(0, len(entries), shard_size))]
    todo = [job for job in jobs if not _done(work, job[0])]
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
    parts = [json.loads((work / part_name(k)).read_text(encoding="utf-8")) for k, _ in jobs]
    rows = [row for part in parts for row in part["rows"]]
    rejected += [r for part in parts for r in part["rejected"]]
    write_manifest(work / MANIFEST_NAME, rows)
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
    }
    if report["records_in"] != report["converted"] + report["rejected"]:  # pragma: no cover - an internal bug
        raise RuntimeError(f"conversion lost samples: {report['records_in']} in, {report['converted']} out, "
                           f"{report['rejected']} rejected")
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
    return printable("\n".join(lines))


def read_member(shard_path: str | Path, span: list[int], handles: dict | None = None) -> bytes:
    """Read one tar member's bytes by its ``[offset, size]`` (manifest ``members``); ``handles`` caches open files
    (``path → (fd, size)``; the caller closes them). Refused with an :class:`OSError` naming the shard and the reason,
    before a byte is read: a shard that resolves outside its folder (a link: :func:`lmm.common.inside`), anything but
    a regular file (a FIFO is opened non-blocking and refused, never waited on; ``/dev/zero`` is a device), and a
    span that is not ``0 <= offset``, ``0 <= size``, ``offset + size <= the file's size`` (fstat once per opened file)."""
    own = handles is None
    handles = {} if own else handles
    try:
        entry = handles.get(shard_path)
        if entry is None:
            try:
                path = inside(os.path.dirname(shard_path) or ".", os.path.basename(shard_path))
            except UnsafePathError as e:
                raise OSError(f"{shard_path}: not read: {e}") from None
            try:
                fd, size = open_regular(path)
            except OSError as e:
                raise OSError(f"{shard_path}: {e.strerror or e}") from None
            if len(handles) >= 64:
                os.close(handles.pop(next(iter(handles)))[0])
            entry = handles[shard_path] = (fd, size)
        fd, length = entry
        if not (isinstance(span, list | tuple) and len(span) == 2 and all(isinstance(v, int) for v in span)):
            raise OSError(f"{shard_path}: member span {span!r} is not [offset, size]")
        offset, size = span
        if offset < 0 or size < 0 or offset + size > length:
            raise OSError(f"{shard_path}: member span [{offset}, {size}] lies outside the file ({length} bytes)")
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise OSError(f"{shard_path}: short read at offset {offset} ({len(data)} of {size} bytes)")
        return data
    finally:
        if own:
            for fd, _ in handles.values():
                os.close(fd)


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
    p.add_argument("--force", action="store_true",
                   help="redo the conversion from scratch (the old folder is replaced once the new one is complete)")
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
