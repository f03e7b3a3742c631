"""Learning proof: the tiny twin (CLIP-336 / Vicuna-7B twins), trained through both stages on the synthetic
665K-like mixture, answers the synthetic VQAv2-like benchmark well above chance — scored through the real evaluation
path (the evaluation that follows train.py, i.e. eval.py's code, and the official-exact VQA scorer).

Measured on this 2-core CPU (seeded): colour questions ≈ 54 % (chance 25 %: four colours), counting ≈ 68 % (chance
33 %: one to three shapes). Shape-presence questions (the POPE-like twin) and the GQA-like twin stay at chance with
this tiny twin (POPE-like accuracy 50 %, always "Yes"); that gap is reported, not hidden: see the printed numbers.
"""

import json
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow
TRAIN = ["data.twin.n_pretrain=2048", "data.twin.n_finetune=16000", "stages.pretrain.epochs=1",
         "stages.finetune.epochs=1", "eval.benchmarks=[vqav2,gqa,pope]", "trainer.enable_progress_bar=false"]


def test_tiny_twin_learns(tmp_path):
    res = subprocess.run([sys.executable, "train.py", f"hydra.run.dir={tmp_path}", *TRAIN], cwd=REPO,
                         capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stderr[-4000:]
    scores = {b: json.loads((tmp_path / "eval" / b / "scores.json").read_text()) for b in ("vqav2", "gqa", "pope")}
    per_type = scores["vqav2"]["per_question_type"]
    pope_acc = sum(scores["pope"][s]["accuracy"] for s in ("adversarial", "popular", "random")) / 3
    print(f"VQAv2-like colour {per_type['what color is the']:.1f} (chance 25.0), counting {per_type['how many']:.1f} "
          f"(chance 33.3), presence {per_type['is there a']:.1f} (chance 50.0); GQA-like {scores['gqa']['score']:.1f}; "
          f"POPE-like accuracy {pope_acc:.1f} (chance 50.0)")
    assert per_type["what color is the"] >= 45
    assert per_type["how many"] >= 55
    # Short answers where the format prompt asks for them (every VQAv2-like question carries it).
    answers = [json.loads(x)["text"] for x in (tmp_path / "eval" / "vqav2" / "answers.jsonl").read_text().splitlines()]
    assert answers and sum(len(a.split()) <= 2 for a in answers) / len(answers) >= 0.95
