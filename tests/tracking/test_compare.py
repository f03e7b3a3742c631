"""Comparisons: the paper's numbers as data, runs read back from MLflow, report + charts, CLI and notebook."""

import os
import subprocess
import sys
import time

import pytest
from conftest import REPO

from lmm.tracking.compare import comparison_table, data_efficiency_table, main, write_report
from lmm.tracking.paper import BENCHMARKS, load_paper_results
from lmm.tracking.runs import collect_runs, discover_stores, headline_scores

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T0 = int(time.time() * 1000) - 3_600_000


def _run(client, exp_id, tags, params=(), metrics=(), start=0):
    """One finished run written the way train.py / eval.py write theirs."""
    from mlflow.entities import Metric, Param

    run = client.create_run(exp_id, tags=tags, start_time=T0 + start)
    rid = run.info.run_id
    client.log_batch(rid, metrics=[Metric(k, v, T0 + start, 0) for k, v in metrics],
                     params=[Param(k, str(v)) for k, v in params])
    client.set_terminated(rid)
    return rid


def _trained_and_evaluated(client, exp_id, tags, twin, seed, scores, start):
    """A pretrain + finetune pair (config as params) and the evaluation child of the finetune run; like
    eval.py, the headline scores are also copied onto the training run (they must not be counted twice)."""
    common = {"git_sha": "0123abc", "run_group": f"outputs/{tags.get('experiment', 'x')}-{start}", **tags}
    params = [("model.twin", twin), ("seed", seed)]
    _run(client, exp_id, {**common, "stage": "pretrain"}, params, [("train/loss", 5.0)], start)
    ft = _run(client, exp_id, {**common, "stage": "finetune"}, params,
              [("train/loss", 1.0), *((f"eval/{b}/score", v) for b, v in scores.items())], start + 1)
    sub = [(f"eval/{b}/answers_per_s", 3.0) for b in scores]
    _run(client, exp_id, {**tags, "kind": "eval", "mlflow.parentRunId": ft, "train_run_id": ft},
         [("checkpoint", "/nonexistent/model")], [*((f"eval/{b}/score", v) for b, v in scores.items()), *sub],
         start + 2)


def build_stores(root):
    """outputs/<run>/mlflow.db with single runs; multirun/<sweep>/mlflow.db with a 3-ratio data-efficiency
    sweep."""
    from mlflow import MlflowClient

    single = root / "outputs" / "20260101-000000"
    sweep = root / "multirun" / "2026-01-01_00-00-00"
    single.mkdir(parents=True)
    sweep.mkdir(parents=True)
    c = MlflowClient(f"sqlite:///{single}/mlflow.db")
    e = c.create_experiment("lmm")
    row7 = {"experiment": "row7_gqa", "paper_table": "2", "paper_row": "7"}
    _trained_and_evaluated(c, e, row7, False, 1, {"gqa": 60.0, "mme": 1400.0, "mmvet": 30.0}, 0)
    _trained_and_evaluated(c, e, row7, False, 2, {"gqa": 62.0, "mme": 1500.0}, 10)
    row0 = {"experiment": "row0_llava", "paper_table": "2", "paper_row": "0"}
    _trained_and_evaluated(c, e, row0, True, 42, {"gqa": 10.0, "mme": 500.0, "pope": 55.5}, 20)
    _trained_and_evaluated(c, e, {}, True, 42, {"textvqa": 5.0}, 30)            # plain `python train.py`
    c = MlflowClient(f"sqlite:///{sweep}/mlflow.db")
    e = c.create_experiment("lmm")
    exp = {"experiment": "llava_v1_5_7b", "paper_table": "3", "paper_row": "llava_v1_5_7b",
           "sweep": "data_efficiency", "sweep.key": "data.finetune.subsample"}
    for i, (ratio, gqa, pope) in enumerate([(0.1, 30.0, 40.0), (0.5, 45.0, 50.0), (1.0, 50.0, 50.0)]):
        _trained_and_evaluated(c, e, {**exp, "sweep.value": str(ratio)}, True, 42, {"gqa": gqa, "pope": pope},
                               40 + 10 * i)
    return root


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    return build_stores(tmp_path_factory.mktemp("tracking"))


@pytest.fixture(scope="module")
def report(store_root, tmp_path_factory):
    runs = collect_runs(discover_stores(store_root))
    out = write_report(runs, load_paper_results(REPO / "experiments" / "paper_results.yaml"),
                       tmp_path_factory.mktemp("report"))
    return runs, out, out["report"].read_text()


def _line(text, start):
    lines = [ln for ln in text.splitlines() if ln.startswith(start)]
    assert len(lines) == 1, (start, lines)
    return lines[0]


def test_paper_results_cover_every_experiment_with_the_papers_numbers():
    paper = load_paper_results(REPO / "experiments" / "paper_results.yaml")
    configs = {p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")}
    assert set(paper.experiments) == configs
    assert set(paper.benchmarks) == set(BENCHMARKS)
    # Table 2 (GQA / MME / MM-Vet), spot checks against the paper's text.
    assert paper.experiments["row0_llava"].scores == {"gqa": None, "mme": 809.6, "mmvet": 25.5}
    assert paper.score("row2_format_prompt", "mme") == 1323.8 and paper.score("row9_13b", "mmvet") == 36.1
    assert paper.score("row8_sharegpt", "mme") == paper.score("llava_v1_5_7b", "mme") == 1510.7
    # Tables 3/4: the final models on all 12 benchmarks; LoRA from MODEL_ZOO.
    for name in ("llava_v1_5_7b", "llava_v1_5_13b", "llava_v1_5_7b_lora", "llava_v1_5_13b_lora",
                 "llava_v1_5_13b_hd"):
        assert set(paper.experiments[name].scores) == set(BENCHMARKS), name
    assert paper.score("llava_v1_5_13b_lora", "vizwiz") == 58.9
    hd = paper.experiments["llava_v1_5_13b_hd"]
    assert hd.scores["pope"] == 86.3 and hd.derived == {"pope"}        # mean of 87.5 / 86.4 / 85.0
    patch, glob = paper.experiments["hd_7b_patch_only"], paper.experiments["hd_7b_global_context"]
    assert round(glob.scores["gqa"] - patch.scores["gqa"], 1) == 0.9
    assert round(glob.scores["mmvet"] - patch.scores["mmvet"], 1) == 3.2
    assert paper.experiments["qformer"].scores == {} and paper.data_efficiency["points"] is None


def test_runs_are_read_back_with_twin_flags_and_without_double_counting(report):
    runs, out, _ = report
    assert len(runs.stores) == 2 and len(runs.runs) == 21 and len(runs.eval_runs) == 7
    scores = headline_scores(runs)
    assert len(scores) == 3 + 2 + 3 + 1 + 6               # eval runs only, not their training parents
    ev = runs.eval_runs.set_index("experiment")
    assert not ev.loc["row7_gqa", "twin"].any() and ev.loc["row0_llava", "twin"]
    assert set(ev.loc["row7_gqa", "seed"]) == {"1", "2"}             # inherited from the parent finetune run
    t = out["table"].set_index(["experiment", "benchmark"])
    assert t.loc[("row7_gqa", "gqa"), "mean"] == 61.0 and t.loc[("row7_gqa", "gqa"), "n"] == 2
    assert t.loc[("row7_gqa", "mmvet"), "n"] == 1 and t.loc[("row7_gqa", "mmvet"), "paper"] == 30.7
    assert t.loc[("llava_v1_5_7b", "gqa"), "n"] == 0                # sweep runs stay out of the main table
    assert t.loc[("row1_vqav2", "mme"), "paper"] == 1197.0           # paper-only rows are kept


def test_report_puts_the_paper_beside_ours(report):
    _, _, text = report
    warning = _line(text, "> **Not comparable to the paper (rows marked †).**")
    assert "tiny-scale twins" in warning and "`row0_llava †`: tiny twin model" in warning
    row7 = _line(text, "| row7_gqa |")
    assert "| 61.0 ± 1.4 (n=2) / 62.0* |" in row7         # GQA: mean ± sample std, paper, seen mark
    assert "| 1450.0 ± 70.7 (n=2) / 1469.2 |" in row7 and "| 30.0 / 30.7 |" in row7
    row0 = _line(text, "| row0_llava † |")
    assert "| 10.0 / – |" in row0 and "| 500.0 / 809.6 |" in row0 and "| 55.5 / – |" in row0
    assert "| – / 1323.8 |" in _line(text, "| row2_format_prompt |")
    assert "| – / 86.3‡ |" in _line(text, "| llava_v1_5_13b_hd |")
    assert "| (untagged) † |" in text and "| 5.0 / – |" in _line(text, "| (untagged) † |")
    assert "## Table 2" in text and "## Data efficiency (Fig. 4)" in text and "LLM choice" not in text


def test_data_efficiency_is_relative_to_the_full_mixture(report):
    runs, out, text = report
    de = data_efficiency_table(runs).set_index(["ratio", "benchmark"])["relative"]
    assert de[(0.1, "gqa")] == pytest.approx(60.0) and de[(0.5, "gqa")] == pytest.approx(90.0)
    assert de[(0.1, "pope")] == pytest.approx(80.0) and de[(1.0, "pope")] == pytest.approx(100.0)
    assert "| 0.1 | 30.0 (60.0%) | 40.0 (80.0%) |" in text
    assert "| 0.5 | 45.0 (90.0%) | 50.0 (100.0%) |" in text
    assert "more than 98% of the full dataset performance" in text


def test_charts_are_valid_pngs(report):
    import matplotlib.image as mpimg

    _, out, text = report
    names = {p.name for p in out["charts"]}
    assert {"bars_gqa.png", "bars_mme.png", "bars_pope.png",
            "data_efficiency_llava_v1_5_7b_twin.png"} <= names
    for p in out["charts"]:
        assert p.read_bytes()[:8] == PNG_MAGIC and f"]({p.name})" in text
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_no_runs_give_paper_only_rows():
    paper = load_paper_results(REPO / "experiments" / "paper_results.yaml")
    t = comparison_table(None, paper)
    assert (t["n"] == 0).all() and t["mean"].isna().all()
    assert t.set_index(["experiment", "benchmark"]).loc[("row6_res336", "mme"), "paper"] == 1450.0


def test_cli_writes_the_report(store_root, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--root", str(store_root), "--out", str(out), "--latest"]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.md'}" in printed and "chart: " in printed and "(7 evaluations)" in printed
    assert "| 62.0 / 62.0* |" in _line((out / "report.md").read_text(), "| row7_gqa |")   # newest run only


def test_cli_without_runs_fails_clearly(tmp_path):
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, "-m", "lmm.tracking.compare", "--root", str(tmp_path),
           "--out", str(tmp_path / "out")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
    assert r.returncode == 2 and "no MLflow store" in r.stderr and "searched:" in r.stderr
    assert not (tmp_path / "out" / "report.md").exists()


@pytest.mark.slow  # executes the notebook in a kernel
def test_notebook_runs(store_root, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "notebooks" / "compare_runs.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")   # committed without outputs
    old = {k: os.environ.get(k) for k in ("LMM_TRACKING_ROOT", "LMM_COMPARE_OUT")}
    os.environ.update(LMM_TRACKING_ROOT=str(store_root), LMM_COMPARE_OUT=str(tmp_path / "nb"))
    try:
        NotebookClient(nb, timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert (tmp_path / "nb" / "report.md").read_text().startswith("# LLaVA-1.5 reproduction")
    shown = "".join(str(o.get("data", {}).get("text/plain", ""))
                    for c in nb.cells for o in c.get("outputs", []))
    assert "row7_gqa" in shown and "61.0 ± 1.4 (n=2) / 62.0*" in shown


def test_an_unreadable_store_is_reported_not_fatal(store_root, tmp_path):
    broken = tmp_path / "mlflow.db"
    broken.write_bytes(b"this is not an sqlite file" * 100)
    runs = collect_runs([*discover_stores(store_root), f"sqlite:///{broken}"])
    assert len(runs.eval_runs) == 7 and len(runs.problems) == 1 and str(broken) in runs.problems[0]


def test_twin_flag_from_the_evaluated_checkpoint(tmp_path):
    """An evaluation logged to another store than its training (no parent run to ask) reads ``model.twin``
    from the evaluated model folder's lmm_model.yaml."""
    from mlflow import MlflowClient

    model = tmp_path / "run" / "finetune" / "model"
    model.mkdir(parents=True)
    (model / "lmm_model.yaml").write_text("model:\n  twin: true\n")
    store = tmp_path / "outputs" / "eval-only"
    store.mkdir(parents=True)
    c = MlflowClient(f"sqlite:///{store}/mlflow.db")
    _run(c, c.create_experiment("lmm"), {"experiment": "row7_gqa", "kind": "eval"}, [("checkpoint", model)],
         [("eval/gqa/score", 40.0)])
    runs = collect_runs(discover_stores(tmp_path))
    assert runs.eval_runs["twin"].tolist() == [True]
    out = write_report(runs, load_paper_results(REPO / "experiments" / "paper_results.yaml"), tmp_path / "r")
    assert "| 40.0 / 62.0* |" in _line(out["report"].read_text(), "| row7_gqa † |")


def test_llm_choice_is_relative_to_the_best_llm(tmp_path):
    """Fig. 3: built from in-memory tables (no MLflow needed), as collect_runs returns them."""
    import pandas as pd

    from lmm.tracking.compare import llm_choice_table
    from lmm.tracking.runs import RUN_COLUMNS, Runs

    llms = {"lmsys/vicuna-7b-v1.3": (40.0, 1000.0), "lmsys/vicuna-7b-v1.5": (50.0, 800.0)}
    runs = pd.DataFrame([{c: None for c in RUN_COLUMNS} | {
        "run_id": f"r{i}", "kind": "eval", "experiment": "llava_v1_5_7b", "twin": False,
        "sweep": "llm_choice", "sweep_value": llm, "start_time": pd.Timestamp("2026-01-01")}
        for i, llm in enumerate(llms)])
    scores = pd.DataFrame([(f"r{i}", b, "score", v) for i, vals in enumerate(llms.values())
                           for b, v in zip(("gqa", "mme"), vals)],
                          columns=["run_id", "benchmark", "metric", "value"])
    paper = load_paper_results(REPO / "experiments" / "paper_results.yaml")
    lc = llm_choice_table(Runs(runs, scores, ["memory"]), paper)
    lc = lc.set_index(["variant", "benchmark"])["relative"]
    assert lc[("Vicuna-v1.3", "gqa")] == pytest.approx(80.0)
    assert lc[("Vicuna-v1.5", "mme")] == pytest.approx(80.0) and lc[("Vicuna-v1.5", "gqa")] == 100.0
    out = write_report(Runs(runs, scores, ["memory"]), paper, tmp_path)
    text = out["report"].read_text()
    assert "## LLM choice (Fig. 3)" in text
    assert "| Vicuna-v1.3 | 40.0 (80.0%) | 1000.0 (100.0%) |" in text
    assert (tmp_path / "llm_choice_llava_v1_5_7b.png").read_bytes()[:8] == PNG_MAGIC


def test_a_val_number_is_never_shown_as_test_dev_without_saying_so(tmp_path):
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = c.create_experiment("lmm")
    _run(c, exp, {"experiment": "row7_gqa", "kind": "eval", "split.vqav2": "val", "split.vizwiz": "val"},
         metrics=[("eval/vqav2/score", 70.0), ("eval/vizwiz/score", 40.0)])
    paper = load_paper_results(REPO / "experiments" / "paper_results.yaml")
    report = write_report(collect_runs([f"sqlite:///{tmp_path}/mlflow.db"]), paper, tmp_path / "r")["report"]
    note = _line(report.read_text(), "> **Not the paper's split.**")
    assert "**VQAv2**: ours on **val**, the paper's on **test-dev**" in note and "VizWiz" in note
    _run(c, exp, {"experiment": "row3_mlp_connector", "kind": "eval", "split.vqav2": "test-dev",
                  "split.vizwiz": "test"}, metrics=[("eval/vqav2/score", 70.0)])  # the paper's splits: no note
    c.delete_run(c.search_runs([exp], filter_string="tags.experiment = 'row7_gqa'")[0].info.run_id)
    again = write_report(collect_runs([f"sqlite:///{tmp_path}/mlflow.db"]), paper, tmp_path / "r2")["report"]
    assert "Not the paper's split" not in again.read_text()
