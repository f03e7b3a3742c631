"""LLM judges for LLaVA-Bench-in-the-Wild and MM-Vet, over any OpenAI-compatible chat endpoint.

Only the HTTP client differs from the official scripts: prompts, decoding settings, parsers and the retry rule
are theirs (``eval_gpt_review_bench.py``; ``mm-vet_evaluator.py``), and the judgments are written in their file
formats so ``python -m lmm.evaluation score --judgments`` reads official and home-made judgments alike. A judge
other than the paper's GPT-4 snapshots gives numbers that are *not* comparable to the paper: label them.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmm.evaluation.answers import PredictionsError, index_by, read_predictions
from lmm.evaluation.benchmarks.base import BenchmarkDataError, JudgeNotConfiguredError, read_json, read_jsonl
from lmm.evaluation.benchmarks.llava_wild import LLaVAWild
from lmm.evaluation.benchmarks.mmvet import MMVet, mmvet_key
from lmm.evaluation.judge_prompts import (
    LLAVA_W_RULES,
    LLAVA_W_SYSTEM,
    MMVET_RETRY_SUFFIX,
    llava_wild_user_message,
    mmvet_query,
)
from lmm.evaluation.rule_grader import RULE_GRADER, grade_mmvet_rules

__all__ = [
    "ChatClient",
    "JudgeConfig",
    "JudgeError",
    "grade_mmvet_sample",
    "judge_file",
    "judge_llava_wild",
    "judge_mmvet",
    "judge_skip_reason",
    "parse_llava_wild_review",
    "parse_mmvet_score",
    "run_judge",
]


JUDGE_KINDS = ("gpt", "rule")  # judge.kind: an OpenAI-compatible LLM judge, or MM-Vet's rule grader


class JudgeError(RuntimeError):
    """The judge endpoint failed in a way retrying does not fix."""


@dataclass(frozen=True)
class JudgeConfig:
    base_url: str  # e.g. http://127.0.0.1:8000/v1 ; requests go to {base_url}/chat/completions
    model: str
    api_key_env: str = (
        "OPENAI_API_KEY"  # name of the env var holding the key; unset = no Authorization header
    )
    timeout_s: float = 120.0
    max_attempts: int = 6
    retry_wait_s: float = 1.0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse every redirect: urllib would resend the ``Authorization`` header to wherever ``Location`` points
    (another host included) and trust its answer. The 3xx then surfaces as an ``HTTPError``."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class ChatClient:
    """A minimal ``/chat/completions`` client on ``urllib``; retries 429 / 5xx / network errors with backoff.
    Redirects are never followed (the API key must reach only ``base_url``): a 3xx is a :class:`JudgeError`
    naming where it pointed."""

    def __init__(self, config: JudgeConfig):
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.api_key = os.environ.get(config.api_key_env) if config.api_key_env else None
        self._opener = urllib.request.build_opener(_NoRedirect)

    def complete(self, messages: Sequence[Mapping[str, str]], *, temperature: float, max_tokens: int):
        """``(content, model)`` of the first choice; ``content`` may be ``None`` if the server sent none."""
        payload = {
            "model": self.config.model,
            "messages": list(messages),
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        body = json.dumps(payload).encode("utf-8")
        last_error = ""
        for attempt in range(self.config.max_attempts):
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with self._opener.open(request, timeout=self.config.timeout_s) as response:
                    data = json.loads(response.read().decode("utf-8"))
                message = data["choices"][0]["message"]
                return message.get("content"), data.get("model", self.config.model)
            except urllib.error.HTTPError as err:
                if 300 <= err.code < 400:
                    raise JudgeError(
                        f"judge endpoint {self.url} redirected (HTTP {err.code}) to "
                        f"{err.headers.get('Location') or '(no Location header)'}; "
                        "requests are not redirected, so the API key goes to the configured endpoint only: set "
                        "the base URL to the final address") from err
                detail = err.read().decode("utf-8", "replace")[:300]
                if err.code != 429 and err.code < 500:
                    raise JudgeError(f"judge endpoint {self.url} answered HTTP {err.code}: {detail}") from err
                last_error = f"HTTP {err.code}: {detail}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                last_error = f"{type(err).__name__}: {err}"
            except (KeyError, IndexError, TypeError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise JudgeError(f"judge endpoint {self.url} sent a malformed response ({err!r})") from err
            if attempt + 1 < self.config.max_attempts:
                time.sleep(min(30.0, self.config.retry_wait_s * 2**attempt))
        raise JudgeError(
            f"judge endpoint {self.url} failed {self.config.max_attempts} times; last: {last_error}"
        )


# --------------------------------------------------------------------------- LLaVA-Bench-in-the-Wild


def parse_llava_wild_review(review: str | None) -> list[float]:
    """``parse_score``: the first line, commas → spaces, ``split(' ')``; exactly two tokens → floats, else
    ``[-1, -1]`` (a parse failure)."""
    try:
        tokens = review.split("\n")[0].replace(",", " ").split(" ")  # type: ignore[union-attr]
        if len(tokens) == 2:
            return [float(tokens[0]), float(tokens[1])]
    except (AttributeError, ValueError):
        pass
    return [-1.0, -1.0]


def _review(client, idx, question, contexts, references, answers, temperature, max_tokens) -> dict[str, Any]:
    """One ``eval_gpt_review_bench.py`` review record (Assistant 1 = GPT-4 reference, 2 = the model)."""
    qid = question["question_id"]
    reference, answer = references.get(qid), answers[qid]
    if reference is None:
        raise BenchmarkDataError(f"no GPT-4 reference answer for LLaVA-Bench question {qid!r}")
    caption = contexts[question["image"]]["caption"]
    category = "llava_bench_" + question["category"]
    content = llava_wild_user_message(
        "\n".join(caption) if isinstance(caption, list) else caption,
        question["text"],
        reference["text"],
        answer["text"],
        LLAVA_W_RULES[category],
    )
    messages = [{"role": "system", "content": LLAVA_W_SYSTEM}, {"role": "user", "content": content}]
    text, model = client.complete(messages, temperature=temperature, max_tokens=max_tokens)
    return {
        "id": idx + 1,
        "question_id": qid,
        "answer1_id": reference.get("answer_id", qid),
        "answer2_id": answer.get("answer_id", qid),
        "category": category,
        "content": text,
        "tuple": parse_llava_wild_review(text),
        "judge_model": model,
    }


def judge_llava_wild(
    client: ChatClient,
    data_root: str | Path,
    predictions: Sequence[Mapping[str, Any]],
    output: str | Path,
    *,
    temperature: float = 0.2,
    max_tokens: int = 1024,
    resume: bool = True,
) -> Path:
    """Review every question (GPT-4 reference vs the model) and write the official review JSONL."""
    root = Path(data_root) / LLaVAWild.ROOT
    questions = read_jsonl(root / "questions.jsonl")
    contexts = {c["image"]: c for c in read_jsonl(root / "context.jsonl")}
    references, _ = index_by(read_jsonl(root / "answers_gpt4.jsonl"), lambda r: r["question_id"])
    answers, _ = index_by(predictions, lambda r: r["question_id"])
    missing = [q["question_id"] for q in questions if q["question_id"] not in answers]
    if missing:
        raise PredictionsError(
            f"{len(missing)} LLaVA-Bench question(s) have no prediction (e.g. {missing[:3]})"
        )
    output = Path(output)
    done: dict[Any, dict[str, Any]] = {}
    if resume and output.is_file():
        done, _ = index_by(read_jsonl(output), lambda r: r["question_id"])
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf-8") as handle:
        written = 0
        try:
            for idx, question in enumerate(questions):
                qid = question["question_id"]
                review = done.get(qid)
                if review is None or review.get("answer2_id") != answers[qid].get("answer_id", qid):
                    review = _review(
                        client, idx, question, contexts, references, answers, temperature, max_tokens
                    )
                handle.write(json.dumps(review) + "\n")
                handle.flush()
                written += 1
        finally:  # a failed run keeps the earlier reviews of the questions it has not reached
            for question in questions[written:]:
                if question["question_id"] in done:
                    handle.write(json.dumps(done[question["question_id"]]) + "\n")
    return output


# --------------------------------------------------------------------------- MM-Vet


def parse_mmvet_score(content: str | None) -> float | None:
    """``float(content.split(" ")[0].strip())`` if it lies in [0, 1] (NaN rejected), else ``None``."""
    if content is None:
        return None
    try:
        score = float(content.split(" ")[0].strip())
    except ValueError:
        return None
    return score if 0.0 <= score <= 1.0 else None


def grade_mmvet_sample(client: ChatClient, query: str, max_tokens: int = 3) -> tuple[str, str | None, float]:
    """One grade as ``mm-vet_evaluator.py`` gets it: ask at temperature 0; while the reply does not parse, re-ask
    with the "(digit)" suffix (the first retry still at 0, then +0.5 each time); after the fifth retry the score
    is 0. Returns ``(judge model, stored content, score)`` with the content stored the official way."""
    temperature = 0.0
    content, model = client.complete(
        [{"role": "user", "content": query}], temperature=temperature, max_tokens=max_tokens
    )
    tries = 1
    while True:
        score = parse_mmvet_score(content)
        if score is not None:
            return model, content.split(" ")[0].strip(), score  # type: ignore[union-attr]
        retry = [{"role": "user", "content": query + MMVET_RETRY_SUFFIX}]
        content, model = client.complete(retry, temperature=temperature, max_tokens=max_tokens)
        tries += 1
        temperature += 0.5
        if tries > 5:
            return model, content, 0.0


def judge_mmvet(
    client: ChatClient,
    data_root: str | Path,
    predictions: Sequence[Mapping[str, Any]],
    output: str | Path,
    *,
    runs: int = 1,
    resume: bool = True,
) -> Path:
    """Grade every MM-Vet sample ``runs`` times and write the official grade JSON
    (``{"v1_<n>": {"model": [...], "content": [...], "score": [...]}}``), saving after each sample."""
    metadata = MMVet().metadata(data_root)
    answers = {mmvet_key(r["question_id"]): r["text"] for r in predictions}
    missing = [key for key in metadata if key not in answers]
    if missing:
        raise PredictionsError(f"{len(missing)} MM-Vet sample(s) have no prediction (e.g. {missing[:3]})")
    output = Path(output)
    grades: dict[str, dict[str, list[Any]]] = {}
    if resume and output.is_file():
        grades = read_json(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    for run in range(runs):
        for key, sample in metadata.items():
            entry = grades.setdefault(key, {"model": [], "content": [], "score": []})
            if len(entry["score"]) > run:
                continue
            query = mmvet_query(sample["question"], sample["answer"], answers[key])
            model, content, score = grade_mmvet_sample(client, query)
            entry["model"].append(model)
            entry["content"].append(content)
            entry["score"].append(score)
            output.write_text(json.dumps(grades, indent=4), encoding="utf-8")
    output.write_text(json.dumps(grades, indent=4), encoding="utf-8")
    return output


def judge_file(
    benchmark: str,
    predictions: str | Path,
    data_root: str | Path,
    output: str | Path,
    config: JudgeConfig,
    *,
    runs: int = 1,
    resume: bool = True,
) -> Path:
    """Judge an answer JSONL file into ``output`` (LLaVA-W: one review file = one run; MM-Vet: ``runs`` runs in
    one grade file)."""
    pf = read_predictions(predictions)
    if pf.n_unparsable:
        raise PredictionsError(pf.describe_unparsable())
    client = ChatClient(config)
    if benchmark == "mmvet":
        return judge_mmvet(client, data_root, pf.records, output, runs=runs, resume=resume)
    if benchmark == "llava_wild":
        if runs != 1:
            raise ValueError("LLaVA-W keeps one review file per judge run: judge once per output file")
        return judge_llava_wild(client, data_root, pf.records, output, resume=resume)
    raise ValueError(f"{benchmark} is not judge-scored; judged benchmarks: llava_wild, mmvet")


def judge_skip_reason(benchmark: str, *, kind: str = "gpt", base_url: str | None = None, **_: Any) -> str | None:
    """Why ``eval.py`` cannot score the judged ``benchmark`` with the ``judge`` config (its keys as keywords), or
    None when it can: ``kind: gpt`` needs ``base_url``; ``kind: rule`` grades MM-Vet only."""
    if kind not in JUDGE_KINDS:
        raise ValueError(f"judge.kind must be one of {', '.join(JUDGE_KINDS)}, got {kind!r}")
    if kind == "rule":
        if benchmark == "mmvet":
            return None
        return (f"{benchmark} is scored by an LLM judge only (judge.kind=rule grades MM-Vet alone): set judge.kind=gpt "
                "and judge.base_url")
    if not base_url:
        return f"no judge configured for {benchmark}, which an LLM judge scores (judge.base_url is empty)"
    return None


def run_judge(
    benchmark: str,
    predictions: str | Path,
    data_root: str | Path,
    output_dir: str | Path,
    *,
    base_url: str | None = None,
    model: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    runs: int = 1,
    timeout_s: float = 120.0,
    resume: bool = True,
    kind: str = "gpt",
) -> Path:
    """The judge step of ``eval.py``: returns the judgment file to pass to ``Benchmark.score(judgments=[...])``,
    ``output_dir/reviews.jsonl`` (LLaVA-W) or ``output_dir/grade-<runs>runs.json`` (MM-Vet); with ``kind="rule"``
    MM-Vet is graded by rules (:mod:`lmm.evaluation.rule_grader`) into ``output_dir/grade-rule-v1.json``."""
    reason = judge_skip_reason(benchmark, kind=kind, base_url=base_url)
    if reason:
        raise JudgeNotConfiguredError(f"skipped: {reason}")
    if kind == "rule":
        pf = read_predictions(predictions)
        if pf.n_unparsable:
            raise PredictionsError(pf.describe_unparsable())
        return grade_mmvet_rules(data_root, pf.records, Path(output_dir) / f"grade-{RULE_GRADER}.json")
    if not base_url:
        raise JudgeNotConfiguredError(
            f"skipped: no judge configured for {benchmark} (judge.base_url is empty)"
        )
    if not model:
        raise ValueError("the judge needs a model name (judge.model)")
    config = JudgeConfig(base_url=base_url, model=model, api_key_env=api_key_env, timeout_s=timeout_s)
    name = f"grade-{runs}runs.json" if benchmark == "mmvet" else "reviews.jsonl"
    return judge_file(
        benchmark, predictions, data_root, Path(output_dir) / name, config, runs=runs, resume=resume
    )
