"""Continue an interrupted run: ``python -m lmm.training.resume outputs/<run> [more overrides]``.

Re-runs ``train.py`` with the overrides the run was started with, in the same folder, with ``resume=auto``: finished
stages are kept, the interrupted one continues from its newest readable checkpoint, in the same MLflow run. Extra
overrides are appended as typed (e.g. ``trainer.devices=4`` after losing a node — the data plan then changes, which
the data position check refuses rather than repeat or skip samples).

The overrides come from ``<run>/overrides.yaml`` (the run's own copy, written when it started) or, for older runs,
Hydra's ``<run>/.hydra/overrides.yaml``. Whoever can write into a run folder must not be able to run code through
it, so each recorded override must be a plain ``key=value`` (:func:`check_override`). Refused, naming the file,
the override and why: what makes Hydra call or build something (``_target_``, ``_call_``, ``_partial_``,
``_args_``, ``_recursive_``, ``_convert_``) or transformers run a model folder's Python (``trust_remote_code``);
an interpolation ``${...}`` (resolvers can assemble such a key from parts); any key of Hydra's own
(``hydra.searchpath`` would add a config folder from anywhere); flags (``-m``, ``--config-dir``, ...); a key with a
``..`` part; a config group choice that is not a plain option name (the value names the file to load); a package
override (``group@package``) other than the project's own (``strategy@stages.<s>.strategy``,
``stage@stages.<s>``; ``eval=official`` is a plain group choice). The recorded ``hydra.run.dir``,
``resume`` and ``overwrite`` are dropped (the resume sets the folder and ``resume=auto`` itself)."""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

import yaml

from lmm.training.run_folder import OWN_OVERRIDES, replayable

ROOT = Path(__file__).resolve().parents[3]
TRAIN = ROOT / "train.py"
CONF = ROOT / "conf"
SPECIAL = ("_target_", "_call_", "_partial_", "_args_", "_recursive_", "_convert_")  # Hydra's instantiate keys
REMOTE_CODE = "trust_remote_code"  # model.llm.trust_remote_code=true: transformers runs the model folder's Python
KEY = re.compile(r"^(~|\+\+|\+)?([A-Za-z0-9_.@/-]+)$")
OPTION = re.compile(r"^[A-Za-z0-9_.-]+$")
PACKAGES = {"strategy": r"stages\.\w+\.strategy", "stage": r"stages\.\w+"}


def check_override(override: str) -> str | None:
    """Why ``override`` may not be replayed from a file, or None when it is a plain ``key=value``."""
    if not isinstance(override, str):
        return "not a string"
    if override.startswith("-"):
        return "a flag, not a key=value override"
    key, eq, value = override.partition("=")
    m = KEY.match(key)
    if not m:
        return "its key is not a plain key (letters, digits, _ . @ / -, with an optional + ++ ~ prefix)"
    if not eq and m.group(1) != "~":
        return "not a key=value override"
    for name in SPECIAL:
        if name in override:
            return f"{name} makes Hydra call or build an object"
    if REMOTE_CODE in override:
        return f"{REMOTE_CODE} lets transformers run the Python of a model folder"
    if "${" in value:
        return "an interpolation ${...} (resolvers can assemble a _target_ from parts)"
    path = m.group(2)
    if ".." in path.split("@")[0] or path.startswith("/"):
        return "its key has a '..' part or a leading '/'"
    group, _, package = path.partition("@")
    if group == "hydra" or group.startswith(("hydra.", "hydra/")) or package.split(".")[0] == "hydra":
        return "a key of Hydra's own configuration (e.g. hydra.searchpath adds a config folder)"
    if package and not (group in PACKAGES and re.fullmatch(PACKAGES[group], package)):
        return ("a package override places a config file elsewhere in the config; only "
                "strategy@stages.<s>.strategy and stage@stages.<s> are replayed")
    if (CONF / group).is_dir() and eq and not (OPTION.match(value) and ".." not in value):
        return f"the value of config group {group} must be a plain option name (it names a file of conf/{group})"
    return _check_parsed(override)


def _check_parsed(override: str) -> str | None:
    """What Hydra makes of ``override`` (its own parser: quotes and escapes undone, lists and dicts built) holds no
    instantiate key and no interpolation either, at any depth."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        value = OverridesParser.create().parse_override(override).value()
    except HydraException as e:
        return f"Hydra cannot parse it ({str(e).splitlines()[0]})"
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            todo += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            todo += item
        elif isinstance(item, str) and (any(name in item for name in SPECIAL) or "${" in item):
            return f"its value holds {item!r} once Hydra has parsed it"
    return None


def recorded_overrides(run_dir: str | Path) -> tuple[Path, list[str]]:
    """The file the run's overrides are read from and its overrides, each checked (:func:`check_override`); a
    ``SystemExit`` naming the file and the first refused override otherwise."""
    run_dir = Path(run_dir)
    path = next((p for p in (run_dir / OWN_OVERRIDES, run_dir / ".hydra" / "overrides.yaml") if p.is_file()), None)
    if path is None:
        raise SystemExit(f"{run_dir} has no overrides.yaml nor .hydra/overrides.yaml: not a train.py run folder")
    try:
        overrides = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise SystemExit(f"{path}: not UTF-8 ({e.reason} at byte {e.start}); nothing was run") from None
    except yaml.YAMLError as e:
        raise SystemExit(f"{path}: not YAML ({str(e).splitlines()[0]}); nothing was run") from None
    if overrides is None:
        overrides = []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise SystemExit(f"{path}: not a list of strings (Hydra's overrides); nothing was run")
    kept = replayable(overrides)
    for o in kept:
        why = check_override(o)
        if why:
            raise SystemExit(f"{path}: refused to replay the override {o!r}: {why}. Nothing was run; if you trust "
                             f"it, type it after the run folder yourself (python -m lmm.training.resume {run_dir} "
                             f"{shlex.quote(o)}), or edit the file.")
    return path, kept


def resume_command(run_dir: str | Path, extra: list[str] | None = None) -> list[str]:
    """``train.py`` with the run's checked overrides, its folder, ``resume=auto`` and ``extra`` (as typed)."""
    run_dir = Path(run_dir).resolve()
    _, overrides = recorded_overrides(run_dir)
    return [sys.executable, str(TRAIN), *overrides, f"hydra.run.dir={run_dir}", "resume=auto", *(extra or [])]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    cmd = resume_command(argv[0], argv[1:])
    print("resuming:", " ".join(cmd), flush=True)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
