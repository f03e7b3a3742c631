"""The judge clients end-to-end against a fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lmm.evaluation.__main__ import main
from lmm.evaluation.benchmarks import JudgeNotConfiguredError, get_benchmark
from lmm.evaluation.judge import (
    ChatClient,
    JudgeConfig,
    JudgeError,
    judge_llava_wild,
    judge_mmvet,
    parse_llava_wild_review,
    parse_mmvet_score,
    run_judge,
)
from lmm.evaluation.judge_prompts import LLAVA_W_RULES, LLAVA_W_SYSTEM, MMVET_PROMPT, MMVET_RETRY_SUFFIX


class FakeJudge:
    """A threaded HTTP server answering ``POST /v1/chat/completions`` with ``responder(payload)``: a string is
    the reply content, an int an HTTP error status. It shuts itself down after ``lifetime_s``."""

    def __init__(self, responder, lifetime_s: float = 60.0):
        self.responder, self.requests = responder, []
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server API
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                judge.requests.append({"path": self.path, "headers": dict(self.headers), "payload": payload})
                reply = judge.responder(payload)
                if isinstance(reply, int):
                    self.send_response(reply)
                    self.end_headers()
                    self.wfile.write(b'{"error": "scripted failure"}')
                    return
                body = (
                    reply
                    if isinstance(reply, bytes)
                    else json.dumps(
                        {
                            "model": "fake-judge-1",
                            "choices": [{"message": {"role": "assistant", "content": reply}}],
                        }
                    ).encode()
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.watchdog = threading.Timer(lifetime_s, self.server.shutdown)
        self.watchdog.daemon = True
        self.thread.start()
        self.watchdog.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.watchdog.cancel()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def fake_judge():
    started = []

    def start(responder):
        started.append(FakeJudge(responder))
        return started[-1]

    yield start
    for judge in started:
        judge.close()


def _client(judge, **kwargs):
    return ChatClient(
        JudgeConfig(base_url=judge.base_url, model="judge-x", retry_wait_s=0.01, timeout_s=10, **kwargs)
    )


def test_prompts_are_the_official_texts():
    # sha256 of the official strings (rule.json llava_bench_* prompt; mm-vet_evaluator.py few-shot prompt)
    rule = LLAVA_W_RULES["llava_bench_conv"]["prompt"]
    assert hashlib.sha256(rule.encode()).hexdigest() == (
        "2ce22b562d6008864970ea863ac8a4d385ea6f2e64ab1313a23f825202a9529d"
    )
    assert hashlib.sha256(MMVET_PROMPT.encode()).hexdigest() == (
        "d1b3e0a5b4e72c888b77164489d705bba4dd149934fff564dfba6443d81afe3f"
    )
    assert (
        LLAVA_W_RULES["llava_bench_complex"]
        == LLAVA_W_RULES["llava_bench_detail"]
        == {"role": "Assistant", "prompt": rule}
    )


@pytest.mark.parametrize(
    ("review", "expected"),
    [
        ("8 6\nwhy", [8.0, 6.0]),
        ("8,6", [8.0, 6.0]),
        ("8, 6", [-1, -1]),
        ("8.5 9", [8.5, 9.0]),
        ("8  6", [-1, -1]),
        ("Score: 8 6", [-1, -1]),
        ("", [-1, -1]),
        (None, [-1, -1]),
        ("a b", [-1, -1]),
    ],
)
def test_parse_llava_wild_review(review, expected):
    assert parse_llava_wild_review(review) == expected


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("0.5", 0.5),
        ("1.0 because", 1.0),
        (" 0.3", None),
        ("1.5", None),
        ("nan", None),
        ("great", None),
        (None, None),
        ("0.0\n", 0.0),
    ],
)
def test_parse_mmvet_score(content, expected):
    assert parse_mmvet_score(content) == expected


def test_client_retries_server_errors_and_fails_fast_on_client_errors(fake_judge):
    replies = iter([503, 500, "ok"])
    judge = fake_judge(lambda payload: next(replies))
    assert _client(judge).complete([{"role": "user", "content": "hi"}], temperature=0, max_tokens=3) == (
        "ok",
        "fake-judge-1",
    )
    assert len(judge.requests) == 3 and judge.requests[0]["path"] == "/v1/chat/completions"
    bad = fake_judge(lambda payload: 400)
    with pytest.raises(JudgeError, match="HTTP 400"):
        _client(bad).complete([], temperature=0, max_tokens=3)
    assert len(bad.requests) == 1
    down = fake_judge(lambda payload: 502)
    with pytest.raises(JudgeError, match="failed 2 times"):
        _client(down, max_attempts=2).complete([], temperature=0, max_tokens=3)
    garbled = fake_judge(lambda payload: b'{"choices": []}')
    with pytest.raises(JudgeError, match="malformed"):
        _client(garbled).complete([], temperature=0, max_tokens=3)
    not_utf8 = fake_judge(lambda payload: b'{"choices": "\xff"}')  # a JudgeError too, not a UnicodeDecodeError
    with pytest.raises(JudgeError, match="malformed"):
        _client(not_utf8).complete([], temperature=0, max_tokens=3)


@pytest.fixture
def llava_bench(tmp_path, write_jsonl, make_answer):
    root = tmp_path / "llava-bench-in-the-wild"
    write_jsonl(
        root / "questions.jsonl",
        [
            {"question_id": 0, "image": "001.jpg", "text": "What is the name?", "category": "conv"},
            {"question_id": 1, "image": "001.jpg", "text": "Describe.", "category": "detail"},
            {"question_id": 2, "image": "002.jpg", "text": "Why?", "category": "complex"},
        ],
    )
    write_jsonl(
        root / "context.jsonl",
        [
            {"id": "c1", "image": "001.jpg", "caption": "A volcano."},
            {"id": "c2", "image": "002.jpg", "caption": ["Line one.", "Line two."]},
        ],
    )
    write_jsonl(
        root / "answers_gpt4.jsonl",
        [{"question_id": i, "text": f"Reference {i}.", "answer_id": f"r{i}"} for i in range(3)],
    )
    predictions = [make_answer(i, f"Model {i}.", answer_id=f"m{i}") for i in range(3)]
    return tmp_path, predictions


def _llava_reply(payload):
    user = payload["messages"][1]["content"]
    if "[Question]\nWhat is the name?" in user:
        return "6 9\nAssistant 2 is more detailed."
    if "[Question]\nDescribe." in user:
        return "8,6\nAssistant 1 is better."
    return "I cannot decide."


def test_llava_wild_judge_end_to_end(fake_judge, llava_bench, monkeypatch, capsys):
    data_root, predictions = llava_bench
    judge = fake_judge(_llava_reply)
    monkeypatch.setenv("LMM_TEST_JUDGE_KEY", "secret")
    output = data_root / "reviews" / "model-eval1.jsonl"
    judge_llava_wild(_client(judge, api_key_env="LMM_TEST_JUDGE_KEY"), data_root, predictions, output)
    first = judge.requests[0]
    assert first["headers"]["Authorization"] == "Bearer secret"
    assert first["payload"]["model"] == "judge-x"
    assert (first["payload"]["temperature"], first["payload"]["max_tokens"]) == (0.2, 1024)
    assert first["payload"]["messages"][0] == {"role": "system", "content": LLAVA_W_SYSTEM}
    rule = LLAVA_W_RULES["llava_bench_conv"]["prompt"]
    assert first["payload"]["messages"][1]["content"] == (
        "[Context]\nA volcano.\n\n[Question]\nWhat is the name?\n\n[Assistant 1]\nReference 0.\n\n"
        f"[End of Assistant 1]\n\n[Assistant 2]\nModel 0.\n\n[End of Assistant 2]\n\n[System]\n{rule}\n\n"
    )
    assert judge.requests[2]["payload"]["messages"][1]["content"].startswith(
        "[Context]\nLine one.\nLine two.\n\n"
    )
    reviews = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["tuple"] for r in reviews] == [[6.0, 9.0], [8.0, 6.0], [-1.0, -1.0]]
    assert reviews[0] == {
        "id": 1,
        "question_id": 0,
        "answer1_id": "r0",
        "answer2_id": "m0",
        "category": "llava_bench_conv",
        "content": "6 9\nAssistant 2 is more detailed.",
        "tuple": [6.0, 9.0],
        "judge_model": "fake-judge-1",
    }

    result = get_benchmark("llava_wild").score(predictions, data_root, [output])
    # valid reviews only: means (7.0, 7.5) -> 107.1; the official average with the [-1,-1]: (4.333, 4.667)
    assert result["score"] == 107.1 and result["score_official_with_failures"] == 107.7
    assert result["n_parse_failures"] == 1 and result["judge"] == ["fake-judge-1"]
    assert result["n_missing_reviews"] == 0 and result["n_stale_reviews"] == 0

    judge_llava_wild(_client(judge), data_root, predictions, output)  # resume: nothing left to judge
    assert len(judge.requests) == 3
    predictions[1]["answer_id"] = "m1-new"  # a new answer invalidates its review only
    judge_llava_wild(_client(judge), data_root, predictions, output)
    assert len(judge.requests) == 4

    answers = data_root / "answers.jsonl"
    answers.write_text("".join(json.dumps(p) + "\n" for p in predictions))
    code = main(
        [
            "judge",
            "llava_wild",
            "--predictions",
            str(answers),
            "--data-root",
            str(data_root),
            "--base-url",
            judge.base_url,
            "--model",
            "judge-x",
            "--output",
            str(data_root / "r" / "m.jsonl"),
            "--runs",
            "2",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and [p.rsplit("/", 1)[1] for p in out["judgments"]] == ["m-eval1.jsonl", "m-eval2.jsonl"]
    code = main(["score", "llava_wild", "--data-root", str(data_root), "--judgments", *out["judgments"]])
    scored = json.loads(capsys.readouterr().out)
    assert code == 0 and scored["n_runs"] == 2 and scored["score"] == 107.1


@pytest.fixture
def mmvet_data(tmp_path, write_json, make_answer):
    metadata = {
        "v1_0": {
            "imagename": "v1_0.png",
            "question": "What is x?",
            "answer": "-1<AND>-5",
            "capability": ["ocr", "math"],
        },
        "v1_1": {
            "imagename": "v1_1.png",
            "question": "Color?",
            "answer": "red<OR>crimson",
            "capability": ["rec"],
        },
        "v1_2": {"imagename": "v1_2.png", "question": "Explain.", "answer": "funny", "capability": ["gen"]},
    }
    write_json(tmp_path / "mm-vet/mm-vet.json", metadata)
    return tmp_path, [make_answer(0, "x = -1"), make_answer(1, "It is red."), make_answer(2, "No idea")]


def test_mmvet_judge_end_to_end_with_retries(fake_judge, mmvet_data):
    data_root, predictions = mmvet_data
    calls: Counter = Counter()

    def reply(payload):
        content = payload["messages"][0]["content"]
        key = content.split("\n")[-1] if not content.endswith(MMVET_RETRY_SUFFIX) else content.split("\n")[-2]
        calls[key] += 1
        if key.startswith("What is x?"):
            return "0.5 because"
        if key.startswith("Color?"):
            return "Great answer" if calls[key] % 2 == 1 else "1.0"
        return "nope"

    judge = fake_judge(reply)
    output = data_root / "mm-vet/results/model_judge-x-grade-2runs.json"
    judge_mmvet(_client(judge), data_root, predictions, output, runs=2)
    first = judge.requests[0]["payload"]
    assert first["messages"] == [
        {"role": "user", "content": MMVET_PROMPT + "\nWhat is x? | -1 <AND> -5 | x = -1 | "}
    ]
    assert (first["temperature"], first["max_tokens"]) == (0.0, 3)
    color = [r["payload"] for r in judge.requests if "Color?" in r["payload"]["messages"][0]["content"]]
    assert [p["temperature"] for p in color[:2]] == [0.0, 0.0]
    assert color[1]["messages"][0]["content"].endswith(MMVET_RETRY_SUFFIX)
    explain = [r["payload"] for r in judge.requests if "Explain." in r["payload"]["messages"][0]["content"]]
    assert [p["temperature"] for p in explain[:6]] == [0.0, 0.0, 0.5, 1.0, 1.5, 2.0]  # then score 0
    assert len(judge.requests) == 2 * (1 + 2 + 6)
    grades = json.loads(output.read_text())
    assert grades["v1_0"] == {"model": ["fake-judge-1"] * 2, "content": ["0.5", "0.5"], "score": [0.5, 0.5]}
    assert grades["v1_1"]["score"] == [1.0, 1.0] and grades["v1_2"] == {
        "model": ["fake-judge-1"] * 2,
        "content": ["nope", "nope"],
        "score": [0.0, 0.0],
    }

    result = get_benchmark("mmvet").score(predictions, data_root, [output])
    assert result["score"] == pytest.approx(50.0) and result["runs"] == [pytest.approx(50.0)] * 2
    assert result["capabilities"] == {"rec": 100.0, "ocr": 50.0, "gen": 0.0, "math": 50.0}
    assert result["judge"] == ["fake-judge-1"] and result["n_missing"] == 0

    judge_mmvet(_client(judge), data_root, predictions, output, runs=2)  # resume: complete already
    assert len(judge.requests) == 18


def test_run_judge_for_eval_py(fake_judge, mmvet_data, tmp_path):
    data_root, predictions = mmvet_data
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(p) + "\n" for p in predictions))
    judge = fake_judge(lambda payload: "1.0")
    path = run_judge("mmvet", answers, data_root, tmp_path / "judgments", base_url=judge.base_url, model="m")
    assert path == tmp_path / "judgments" / "grade-1runs.json"
    assert get_benchmark("mmvet").score(answers, data_root, judgments=[path])["score"] == 100.0
    with pytest.raises(JudgeNotConfiguredError, match="no judge configured"):
        run_judge("mmvet", answers, data_root, tmp_path, base_url=None, model=None)
    with pytest.raises(ValueError, match="not judge-scored"):
        run_judge("pope", answers, data_root, tmp_path, base_url=judge.base_url, model="m")


def test_llava_wild_failed_rerun_keeps_earlier_reviews(fake_judge, llava_bench):
    data_root, predictions = llava_bench
    output = data_root / "reviews.jsonl"
    judge_llava_wild(_client(fake_judge(_llava_reply)), data_root, predictions, output)
    predictions[0]["answer_id"] = "changed"  # forces a re-review of question 0, which then fails
    with pytest.raises(JudgeError, match="HTTP 400"):
        judge_llava_wild(_client(fake_judge(lambda payload: 400)), data_root, predictions, output)
    reviews = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["question_id"] for r in reviews] == [0, 1, 2] and reviews[0]["answer2_id"] == "m0"
