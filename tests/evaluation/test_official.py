"""The official evaluation (issue 22 items 1 and 2): `eval=official` runs LLaVA-1.5's own settings (batch 1, fp16,
the benchmarks' own token limits, VQAv2 test-dev and VizWiz test) and writes the files LLaVA's
scripts/convert_*_for_submission.py write — EvalAI's for VQAv2 / VizWiz (scored there, the results say so), GQA's
predictions for its eval.py, MMBench's xlsx for OpenCompass — beside the local scores; val scoring stays available,
labelled val. At scale=paper it is the default, and a model folder is scored on files in LLaVA's
playground/data/eval layout (the real samples of tests/fixtures/llava_eval_samples)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import pytest
from conftest import REPO
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient
from PIL import Image

from lmm.evaluation.answers import read_predictions
from lmm.evaluation.benchmarks import get_benchmark
from lmm.evaluation.during_training import local_benchmark
from lmm.evaluation.partial import KEY
from lmm.evaluation.submission import write_submission
from lmm.pipeline import evaluate
from lmm.synth.benchmarks import write_synthetic_benchmarks

from .conftest import answer

SHEET = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"


def read_xlsx(path: Path) -> list[list]:
    """The first sheet's rows (numbers as numbers, inline or shared strings as text, empty cells as None): what
    pandas.read_excel sees, read with the standard library only."""
    with zipfile.ZipFile(path) as z:
        assert {"[Content_Types].xml", "xl/workbook.xml", "xl/worksheets/sheet1.xml"} <= set(z.namelist())
        sheet = ElementTree.fromstring(z.read("xl/worksheets/sheet1.xml"))
    rows = []
    for row in sheet.iter(f"{SHEET}row"):
        cells = {}
        for cell in row.iter(f"{SHEET}c"):
            column = "".join(ch for ch in cell.get("r") if ch.isalpha())
            index = ord(column) - ord("A")
            if cell.get("t") == "inlineStr":
                cells[index] = "".join(t.text or "" for t in cell.iter(f"{SHEET}t"))
            else:
                value = cell.find(f"{SHEET}v").text
                cells[index] = int(value) if value.lstrip("-").isdigit() else float(value)
        rows.append([cells.get(i) for i in range(max(cells) + 1)])
    return rows


def compose_eval(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("eval", overrides=[f"paths.root_dir={REPO}", *overrides])


# ---------------------------------------------------------------------------------------------- the files
@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> Path:
    return write_synthetic_benchmarks(tmp_path_factory.mktemp("twins") / "eval", 2, 28,
                                      names=["vqav2", "vizwiz", "gqa", "mmbench"])


def test_submission_files_in_the_official_formats(twins, eval_samples, tmp_path):
    # VQAv2 (convert_vqav2_for_submission.py): every test2015 question in file order, the answer through EvalAI's
    # processor, '' where test-dev has no answer.
    test2015 = [json.loads(x) for x in (twins / "vqav2/llava_vqav2_mscoco_test2015.jsonl").read_text().splitlines()]
    first, second = (r["question_id"] for r in test2015[:2])
    info = write_submission(get_benchmark("vqav2"), [answer(first, "Two dogs."), answer(second, "Yes, it is.")],
                            twins, tmp_path / "vqav2.json")
    upload = json.loads((tmp_path / "vqav2.json").read_text())
    assert [u["question_id"] for u in upload] == [r["question_id"] for r in test2015]
    assert upload[:3] == [{"question_id": first, "answer": "2 dogs"}, {"question_id": second, "answer": "yes it is"},
                          {"question_id": test2015[2]["question_id"], "answer": ""}]
    assert info == {"n_written": len(test2015), "n_blank": len(test2015) - 2}
    # VizWiz (convert_vizwiz_for_submission.py) on LLaVA's real llava_test.jsonl: [{image, answer}] in its order.
    rows = [json.loads(x) for x in (eval_samples / "vizwiz/llava_test.jsonl").read_text().splitlines()]
    records = [answer(r["question_id"], t) for r, t in zip(rows, ["A can of soup.", "Unanswerable", "No", "3"])]
    write_submission(get_benchmark("vizwiz"), records[::-1], eval_samples, tmp_path / "vizwiz.json")
    assert json.loads((tmp_path / "vizwiz.json").read_text()) == [
        {"image": "VizWiz_test_00000000.jpg", "answer": "can of soup"},
        {"image": "VizWiz_test_00000001.jpg", "answer": "unanswerable"},
        {"image": "VizWiz_test_00000002.jpg", "answer": "no"}, {"image": "VizWiz_test_00000003.jpg", "answer": "3"}]
    # GQA (convert_gqa_for_eval.py): testdev_balanced_predictions.json for the official eval.py.
    write_submission(get_benchmark("gqa"), [answer("201307251", "Yes."), answer("2062325", "Tank top")],
                     eval_samples, tmp_path / "testdev_balanced_predictions.json")
    assert json.loads((tmp_path / "testdev_balanced_predictions.json").read_text()) == [
        {"questionId": "201307251", "prediction": "yes"}, {"questionId": "2062325", "prediction": "tank top"}]
    # MMBench (convert_mmbench_for_submission.py): the TSV without hint / category / source / image / comment /
    # l2-category, `prediction` inserted as the 7th column, matched on `index`; no answer → an empty cell.
    mmb = get_benchmark("mmbench")
    tsv = mmb.rows(twins)
    info = write_submission(mmb, [answer(int(tsv[0]["index"]), "B"), answer(int(tsv[1]["index"]), "C. x")], twins,
                            tmp_path / "mmbench.xlsx")
    sheet = read_xlsx(tmp_path / "mmbench.xlsx")
    assert sheet[0] == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    assert sheet[1][:2] == [int(tsv[0]["index"]), tsv[0]["question"]] and sheet[1][6:8] == ["B", tsv[0]["answer"]]
    assert sheet[2][6] == "C. x" and all(row[6] is None for row in sheet[3:]) and len(sheet) == len(tsv) + 1
    assert info == {"n_written": len(tsv), "n_blank": len(tsv) - 2}


# ------------------------------------------------------------------------------------------ eval=official
def test_eval_official_writes_the_submission_files_and_says_where_the_score_comes_from(model_folder, twins,
                                                                                       tmp_path):
    cfg = compose_eval(f"checkpoint={model_folder}", "eval=official", f"eval.data_root={twins}",
                       "eval.synthetic_benchmarks={n_images: 2, image_size: 28}", "eval.max_new_tokens=4",
                       "eval.benchmarks=[vqav2,vizwiz,gqa,mmbench]", f"output_dir={tmp_path}/out")
    out = evaluate(cfg)  # into the test session's store (tests/conftest.py sets MLFLOW_TRACKING_URI)
    store = out["tracking_uri"]
    res, folder = out["results"], tmp_path / "out"
    for name, split in (("vqav2", "test-dev"), ("vizwiz", "test")):
        r = res[name]
        assert "score" not in r and r["split"] == split and r["scored_on"] == "EvalAI"
        assert r["submission"] == str(folder / name / "answers_upload" / "run.json")
        assert "score on EvalAI" in r["note"] and Path(r["submission"]).is_file()
    upload = json.loads(Path(res["vqav2"]["submission"]).read_text())
    answered = read_predictions(folder / "vqav2" / "answers.jsonl").records
    assert len(answered) == res["vqav2"]["n_questions"] == 3 and res["vqav2"]["n_written"] == len(upload) == 6
    assert {u["question_id"] for u in upload} >= {r["question_id"] for r in answered}
    assert [set(u) for u in json.loads(Path(res["vizwiz"]["submission"]).read_text())] == [{"image", "answer"}] * 2
    assert isinstance(res["gqa"]["score"], float)                     # scored here, and its official file written
    assert res["gqa"]["submission"] == str(folder / "gqa" / "testdev_balanced_predictions.json")
    assert isinstance(res["mmbench"]["score"], float) and res["mmbench"]["submission"].endswith("run.xlsx")
    assert read_xlsx(Path(res["mmbench"]["submission"]))[0][6] == "prediction"
    settings = json.loads((folder / "gqa" / KEY).read_text())   # LLaVA's decoding: batch 1, fp16
    assert settings["batch_size"] == 1 and settings["dtype"] == "float16"

    run = MlflowClient(store).get_run(out["run_id"])
    assert run.data.params["mode"] == "official" and run.data.params["dtype"] == "float16"
    assert run.data.tags["split.vqav2"] == "test-dev" and run.data.tags["split.vizwiz"] == "test"
    assert run.data.tags["benchmark_data"] == "synthetic"
    assert "eval/vqav2" not in run.data.metrics and "eval/gqa" in run.data.metrics   # no number where EvalAI scores
    arts = {a.path for a in MlflowClient(store).list_artifacts(out["run_id"], "eval/vqav2")}
    assert "eval/vqav2/run.json" in arts

    # val scoring stays available, its number labelled split=val
    cfg = compose_eval(f"checkpoint={model_folder}", "eval=official", f"eval.data_root={twins}",
                       "eval.synthetic_benchmarks=null", "eval.max_new_tokens=2", "eval.benchmarks=[vqav2]",
                       "eval.benchmark_options.vqav2.split=val", f"output_dir={tmp_path}/val")
    out = evaluate(cfg)
    assert out["results"]["vqav2"]["split"] == "val" and isinstance(out["results"]["vqav2"]["score"], float)
    assert MlflowClient(store).get_run(out["run_id"]).data.tags["split.vqav2"] == "val"


# ------------------------------------------------------------------------- scale=paper on real-layout files
def _real_layout(samples: Path, root: Path) -> Path:
    """LLaVA's playground/data/eval with the real question files of tests/fixtures (VizWiz test, POPE) and a
    small picture at every image name they use (the real images are not in the repository)."""
    for bench, images in (("vizwiz", "test"), ("pope", "val2014")):
        shutil.copytree(samples / bench, root / bench, ignore=shutil.ignore_patterns("answers"))
        question_file = "llava_test.jsonl" if bench == "vizwiz" else "llava_pope_test.jsonl"
        for row in map(json.loads, (root / bench / question_file).read_text().splitlines()):
            (root / bench / images).mkdir(exist_ok=True)
            Image.new("RGB", (40, 30), (30 * len(row["image"]) % 255, 90, 160)).save(root / bench / images / row["image"])
    return root


def test_paper_scale_scores_a_model_folder_on_real_layout_files(model_folder, eval_samples, tmp_path):
    data = _real_layout(eval_samples, tmp_path / "playground" / "data" / "eval")
    cfg = compose_eval(f"checkpoint={model_folder.parent.parent}", "scale=paper", f"eval.data_root={data}",
                       "eval.benchmarks=[vizwiz,pope]", "eval.max_new_tokens=3", "eval.device=cpu",
                       f"output_dir={tmp_path}/out")
    assert cfg.eval.mode == "official" and cfg.eval.synthetic_benchmarks is None
    out = evaluate(cfg)
    vizwiz, pope = out["results"]["vizwiz"], out["results"]["pope"]
    assert vizwiz["split"] == "test" and "score on EvalAI" in vizwiz["note"]
    upload = json.loads(Path(vizwiz["submission"]).read_text())
    assert [u["image"] for u in upload] == [f"VizWiz_test_0000000{i}.jpg" for i in range(4)]
    assert pope["n_predictions"] == 12 and isinstance(pope["score"], float) and not list(data.rglob(".lmm-*"))
    run = MlflowClient(out["tracking_uri"]).get_run(out["run_id"])
    assert run.data.tags["benchmark_data"] == "real" and run.data.params["batch_size"] == "1"


@pytest.mark.slow  # the command line itself, in a fresh process
def test_eval_py_official_on_a_tiny_model_folder(model_folder, tmp_path):
    res = subprocess.run([sys.executable, "eval.py", f"checkpoint={model_folder}", "eval=official",
                          "eval.benchmarks=[vqav2,vizwiz]", f"eval.data_root={tmp_path}/bench",
                          "eval.synthetic_benchmarks={n_images: 2, image_size: 28}", "eval.max_new_tokens=2",
                          f"hydra.run.dir={tmp_path}/out"],  # the session store: MLFLOW_TRACKING_URI
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("vqav2", "vizwiz"):
        line = next(x for x in res.stdout.splitlines() if x.startswith(f"[{name}]"))
        assert '"submission"' in line and "score on EvalAI" in line
        assert json.loads((tmp_path / "out" / name / "answers_upload" / "run.json").read_text())


def test_scoring_during_training_uses_val_where_the_official_split_is_scored_on_a_server():
    official = {"vqav2": {"split": "test-dev"}, "vizwiz": {"split": "test"}}
    assert local_benchmark("vqav2", official).split == "val" and local_benchmark("vizwiz", official).split == "val"
    assert local_benchmark("gqa", official) == get_benchmark("gqa")
    assert local_benchmark("vqav2", {"vqav2": {"split": "test-dev", "annotations": "a.json"}}).split == "test-dev"
