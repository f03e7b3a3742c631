"""One input of a run — a path, a hub id or a URL, under its config key — and why it cannot be read.

:func:`problem` looks with stat calls only: a file or folder exists and is readable (a shard folder holds its
``manifest.jsonl``); a URL is syntax-checked, never fetched (a scheme other than http(s) needs its fsspec
filesystem installed); a transformers folder holds its ``config.json`` / ``tokenizer_config.json``, or a hub id is
in the Hugging Face cache when ``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1`` (``try_to_load_from_cache``, no
network call; online, a hub id is downloaded on first use). What a run reads is :mod:`lmm.training.inputs`."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from lmm.data.remote import is_url

TRUE = ("1", "ON", "YES", "TRUE")
NEAR_URL = re.compile(r"^[A-Za-z][\w+.-]+:/")  # a scheme and a slash: meant as a URL (a drive letter is one letter)


class InputError(ValueError):
    """A config value or an input the run cannot work with; the message is ``<key>: <what> — <fix>``, one line per
    problem (the entry points print it without a traceback)."""


@dataclass(frozen=True)
class Input:
    """One thing the run reads: its config ``key`` and ``value`` (a path, hub id or URL; empty when the key is not
    set but must be), its ``kind`` (``model``: a transformers folder or hub id holding ``files``; ``timm``: a timm
    hub repo; ``file``, ``folder`` or ``path`` (either); ``shards``: a converted folder or URL; ``required``: must be
    set) and the ``fix``: what provides it."""

    key: str
    value: str
    kind: str
    fix: str
    files: tuple[str, ...] = ()
    what: str = ""  # what it is, when the key alone does not say (an image sub-folder: its sources)


@dataclass(frozen=True)
class Missing:
    input: Input
    problem: str

    def __str__(self) -> str:
        return f"{self.input.key}: {self.problem} — {self.input.fix}"


def format_missing(missing: list[Missing]) -> str:
    n = len(missing)
    head = f"{n} input{'s' * (n != 1)} of this run {'are' if n != 1 else 'is'} missing (checked before any model is built):"
    return "\n".join([head, *(f"  {m}" for m in missing)])


class MissingInputsError(InputError):
    """Every missing input of the run (``.missing``), one line each with what provides it."""

    def __init__(self, missing: list[Missing]):
        self.missing = list(missing)
        super().__init__(format_missing(self.missing))


def hf_offline() -> bool:
    return any(os.environ.get(v, "").upper() in TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_cache() -> str:
    """The Hugging Face hub cache as ``huggingface_hub`` finds it, read from the environment now."""
    env = os.environ
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        return os.path.expanduser(env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"])
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def problem(inp: Input) -> str | None:
    """Why ``inp`` cannot be read, or None. Stat calls and a look into the hub cache only."""
    if not inp.value:
        return "not set"
    if inp.kind == "required":
        return None
    if inp.kind in ("model", "timm"):
        return _model_problem(inp)
    if inp.kind == "shards":
        return _url_problem(inp.value) if is_url(inp.value) else _path_problem(inp.value, "folder", "manifest.jsonl")
    return _path_problem(inp.value, inp.kind, what=inp.what)


def _path_problem(value: str, kind: str, inner: str = "", what: str = "") -> str | None:
    if NEAR_URL.match(value) and "://" not in value:
        return f"{value} is not a URL (scheme://host/path) nor a local {kind}"
    path = Path(value).expanduser()
    label = f"{value} ({what})" if what else value
    if not path.exists():
        return f"no such {'file or folder' if kind == 'path' else kind}: {label}" + (f" (to hold {inner})" if inner else "")
    if kind == "file" and not path.is_file():
        return f"{label} is not a file"
    if kind == "folder" and not path.is_dir():
        return f"{label} is not a folder"
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        return f"{label} is not readable"
    if inner and not (path / inner).is_file():
        return f"{label} holds no {inner}: not a converted shard folder"
    return None


def _url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if not parts.netloc or (scheme in ("http", "https") and not parts.hostname):
        return f"{url} is not a URL of a shard folder (scheme://host/path)"
    if scheme in ("http", "https"):
        return None
    try:
        import fsspec

        fsspec.get_filesystem_class(scheme)
    except ImportError as e:
        return f"{url}: reading {scheme}:// needs a package that is not installed ({e})"
    except ValueError:
        return f"{url}: no filesystem knows the scheme {scheme}://"
    return None


def _model_problem(inp: Input) -> str | None:
    """A folder holding ``inp.files``, or a hub id: offline, in the hub cache; online, it will be downloaded."""
    path = Path(inp.value).expanduser()
    if path.is_dir():
        lacking = [f for f in inp.files if not (path / f).is_file()]
        return f"{inp.value} has no {', '.join(lacking)}: not a complete model folder" if lacking else None
    if path.exists():
        return f"{inp.value} is a file, not a model folder"
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(inp.value)
    except HFValidationError:
        return f"no such folder: {inp.value}"
    if not hf_offline():
        return None  # a hub id: downloaded on first use
    cache = hub_cache()
    lacking = [f for f in inp.files if not isinstance(try_to_load_from_cache(inp.value, f, cache_dir=cache), str)]
    if not lacking:
        return None
    return (f"{inp.value} is not a folder here and the Hugging Face cache ({cache}) lacks its {', '.join(lacking)}; "
            f"HF_HUB_OFFLINE=1 downloads nothing")
