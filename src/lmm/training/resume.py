"""Continue an interrupted run: ``python -m lmm.training.resume outputs/<run> [more overrides]``.

Re-runs ``train.py`` with the overrides the run was started with (Hydra's ``<run>/.hydra/overrides.yaml``), in the
same folder, with ``resume=auto``: finished stages are kept, the interrupted one continues from its newest readable
checkpoint, in the same MLflow run. Extra overrides are appended (e.g. ``trainer.devices=4`` after losing a node —
the data plan then changes, which the data position check refuses rather than repeat or skip samples)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

TRAIN = Path(__file__).resolve().parents[3] / "train.py"


def resume_command(run_dir: str | Path, extra: list[str] | None = None) -> list[str]:
    run_dir = Path(run_dir).resolve()
    recorded = run_dir / ".hydra" / "overrides.yaml"
    if not recorded.exists():
        raise SystemExit(f"{run_dir} has no .hydra/overrides.yaml: not a train.py run folder")
    overrides = [o for o in yaml.safe_load(recorded.read_text()) or [] if not o.startswith("resume=")]
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
