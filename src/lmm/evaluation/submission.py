"""The official submission / evaluator files of a benchmark's answers, as LLaVA's ``scripts/convert_*.py`` write them
(``python -m lmm.evaluation convert`` and ``eval.py``'s ``eval.submissions`` / server-scored splits).

=============  ======================================================  =========================================
benchmark      file (``<out>/<bench>/``; LLaVA's script)               format → where it is scored
=============  ======================================================  =========================================
vqav2          ``answers_upload/<model>.json``                         ``[{question_id, answer}]`` over every
               (``convert_vqav2_for_submission.py``)                   test2015 question, ``''`` unanswered → EvalAI
vizwiz         ``answers_upload/<model>.json``                         ``[{image, answer}]``, every question
               (``convert_vizwiz_for_submission.py``)                  answered → EvalAI
gqa            ``testdev_balanced_predictions.json``                   ``[{questionId, prediction}]`` → GQA's
               (``convert_gqa_for_eval.py``)                           ``eval.py --tier testdev_balanced``
mmbench(_cn)   ``answers_upload/<model>.xlsx``                         the TSV + ``prediction`` → OpenCompass
               (``convert_mmbench_for_submission.py``)
seed           ``answers_upload/<model>.jsonl``                        ``{question_id, prediction}`` lines
               (``convert_seed_for_submission.py``)                    → the SEED-Bench leaderboard
mmvet          ``<model>.json`` (``convert_mmvet_for_eval.py``)        ``{"v1_<id>": answer}`` → the MM-Vet grader
=============  ======================================================  =========================================

Every file is written atomically (a temporary sibling renamed into place)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmm.common import atomic_write
from lmm.evaluation.benchmarks.base import Benchmark, read_json
from lmm.evaluation.benchmarks.gqa import gqa_prediction
from lmm.evaluation.benchmarks.mmbench import convert_mmbench_for_submission
from lmm.evaluation.benchmarks.mmvet import mmvet_key
from lmm.evaluation.benchmarks.seed import SEED, convert_seed_for_submission
from lmm.evaluation.xlsx import write_xlsx

__all__ = ["SUBMISSIONS", "submission_path", "write_submission"]

# benchmark -> its file under the benchmark's output folder ({model}: the model id, as LLaVA's $CKPT)
SUBMISSIONS: dict[str, str] = {
    "vqav2": "answers_upload/{model}.json",
    "vizwiz": "answers_upload/{model}.json",
    "gqa": "testdev_balanced_predictions.json",
    "mmbench": "answers_upload/{model}.xlsx",
    "mmbench_cn": "answers_upload/{model}.xlsx",
    "seed": "answers_upload/{model}.jsonl",
    "mmvet": "{model}.json",
}


def submission_path(name: str, folder: str | Path, model_id: str) -> Path:
    """Where ``eval.py`` writes benchmark ``name``'s file in its output ``folder`` (the model id made a safe file
    name: characters other than letters, digits, ``.``, ``_``, ``-`` become ``_``)."""
    return Path(folder) / SUBMISSIONS[name].format(model=re.sub(r"[^\w.-]", "_", model_id) or "model")


def write_submission(bench: Benchmark, records: Sequence[Mapping[str, Any]], data_root: str | Path,
                     path: str | Path) -> dict[str, int]:
    """Write ``bench``'s official file for the answer ``records`` to ``path``; returns ``n_written`` (entries
    written) and, where the format keeps unanswered questions, ``n_blank`` (written without an answer). VizWiz and
    SEED need every question answered (a :class:`~lmm.evaluation.answers.PredictionsError` otherwise, as the
    official ``assert``)."""
    name, data_root = bench.name, Path(data_root)
    counts: dict[str, int] = {}
    if name == "vqav2":
        data, counts["n_blank"] = bench.submission(records, data_root)
    elif name == "vizwiz":
        data = bench.submission(records, data_root)
    elif name == "gqa":
        data = [{"questionId": r["question_id"], "prediction": gqa_prediction(r["text"])} for r in records]
    elif name == "mmvet":
        data = {mmvet_key(r["question_id"]): r["text"] for r in records}
    elif name == "seed":
        data = convert_seed_for_submission(records, read_json(data_root / SEED.GT_FILE)["questions"])
    elif name in ("mmbench", "mmbench_cn"):
        header, table, counts["n_blank"] = convert_mmbench_for_submission(bench.rows(data_root), records)
        write_xlsx(path, header, table)
        return {"n_written": len(table), **counts}
    else:
        raise ValueError(f"{name} has no official submission file (known: {', '.join(SUBMISSIONS)})")
    with atomic_write(path) as handle:
        if name == "seed":
            handle.writelines(json.dumps(row) + "\n" for row in data)
        else:
            json.dump(data, handle, indent=2 if name == "mmvet" else None)
    return {"n_written": len(data), **counts}
