"""Learning proof: the tiny twin (pretrained CLIP-336 twin / chat-tuned Vicuna-7B twin), trained through both stages on
the synthetic 665K-like mixture, scored through the real evaluation path (the evaluation that follows train.py, i.e.
eval.py's code, and the official-exact scorers) on the synthetic VQAv2-, GQA- and POPE-like benchmarks.

Measured on this 2-core CPU (seeded, 96 benchmark images, 24,000 stage-2 samples, one epoch of 751 steps of 32;
4.7 min with the twins cached, plus ≈ 1.5 min for the tower twin and ≈ 4 min for the LLM twin when the cache does not
hold them yet; 2026-12-03): POPE-like accuracy 93.8 % (chance 50 %: POPE asks each image one yes and one no
question, so a guess from the image alone, e.g. "many objects → yes", scores exactly 50 %); GQA-like 57.3 % (chance
40.3 %, computed below from the question kinds), open questions 47.9 % (chance 30.6 %); VQAv2-like counting 100 %
(chance 33 %), presence 94.8 %. Since issue 23 (the world follows `seed`, the Vicuna twin's chat data hold no format
prompt; 2026-12-04): POPE-like 96.4 %, GQA-like 50.5 % (open 32.3 %, binary 68.8 %), counting 100 %, presence 95.8 %. Both stages train packed (``packing=true``, what ``auto`` does with SDPA too: whole
samples in rows no wider than the longest, attention within samples), so this also proves that packed training
learns (with one row per micro-batch, attention did up to 32× the padded batch's work and this test ran past its
limit on CI). What it took: the LLM twin chat-tuned on the twin world's text (lmm.synth.twin_llm). With a random LLM
twin POPE-like stays at 50 % (GQA-like 47 %, 32,000 samples); with 400 instead of 1000 chat-tuning steps too. Existence questions
that come before the turns naming a shape (lmm.synth.sources.existence_first) lift GQA-like binary questions
from 55 % to 75 % (POPE-like 95 % either way).
"""

import json
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.learning]
TRAIN = ["+study=learning",  # conf/study/learning.yaml: the pretrained twins and this test's scale, for Table 2 too
         "eval.synthetic_benchmarks.n_images=96", "eval.benchmarks=[vqav2,gqa,pope]"]
GQA_CHOICES = {"color": 4, "hposition": 3, "name": 3}  # open queries; every binary question has 2 answers


def gqa_chance(gt: dict, structural: str | None = None) -> float:
    """Expected accuracy (%) of guessing uniformly among each question's possible answers (of one structural type:
    ``query`` = the open questions)."""
    chance = [1 / GQA_CHOICES[q["semantic"][-1]["argument"]] if q["types"]["structural"] == "query" else 0.5
              for q in gt.values() if structural in (None, q["types"]["structural"])]
    return 100 * sum(chance) / len(chance)


def test_tiny_twin_learns(tmp_path):
    bench = tmp_path / "bench"  # 96 images per benchmark, apart from the shared 24-image twins
    res = subprocess.run([sys.executable, "train.py", f"hydra.run.dir={tmp_path}", f"eval.data_root={bench}", *TRAIN],
                         cwd=REPO,
                         capture_output=True, text=True, timeout=2400)  # CI builds the twins first
    assert res.returncode == 0, res.stderr[-4000:]
    scores = {b: json.loads((tmp_path / "eval" / b / "scores.json").read_text()) for b in ("vqav2", "gqa", "pope")}
    per_type = scores["vqav2"]["per_question_type"]
    pope_acc = sum(scores["pope"][s]["accuracy"] for s in ("adversarial", "popular", "random")) / 3
    gt = json.loads((bench / "gqa" / "data" / "testdev_balanced_questions.json").read_text())
    chance, open_chance, gqa = gqa_chance(gt), gqa_chance(gt, "query"), scores["gqa"]
    print(f"VQAv2-like counting {per_type['how many']:.1f} (chance 33.3), colour {per_type['what color is the']:.1f} "
          f"(chance 25.0), presence {per_type['is there a']:.1f} (chance 50.0); GQA-like {gqa['score']:.1f} "
          f"(chance {chance:.1f}): open {gqa['open']:.1f} (chance {open_chance:.1f}), binary {gqa['binary']:.1f} "
          f"(chance 50.0); POPE-like accuracy {pope_acc:.1f} (chance 50.0)")
    assert pope_acc >= 75  # chance 50
    # Since the Vicuna twin's chat data lost the format prompt (issue 23), GQA-like open questions sit just above
    # chance: measured 32.3-39.6 (chance 30.6; 47.9 before) and GQA-like 50.5-57.1 over this test and rows 7-8 of
    # the Table-2 study (docs/table2_mini.md); binary questions 68.8-69.4.
    assert gqa["score"] >= chance + 8
    assert gqa["binary"] >= 60
    assert gqa["open"] >= open_chance
    assert per_type["how many"] >= 70 and per_type["is there a"] >= 70
    # Short answers where the format prompt asks for them (every VQAv2-like question carries it).
    answers = [json.loads(x)["text"] for x in (tmp_path / "eval" / "vqav2" / "answers.jsonl").read_text().splitlines()]
    assert answers and sum(len(a.split()) <= 2 for a in answers) / len(answers) >= 0.95
