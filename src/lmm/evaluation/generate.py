"""Batched greedy generation over benchmark questions, written as LLaVA answer records.

As LLaVA's runners: prompt = template(``"<image>\\n" + text`` or ``text`` for text-only questions), the image
through the checkpoint's preprocessing (``pad``), greedy decoding with the KV cache, output decoded with special
tokens skipped and stripped. Unlike LLaVA (batch size asserted 1) questions are batched with left padding; the
answers are identical to one-at-a-time decoding (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lmm.data.batch import Example, collate
from lmm.data.hd_cells import transform_images
from lmm.evaluation.answers import make_answer_record
from lmm.models.llava import LlavaModel
from lmm.text.templates import IMAGE_TOKEN, Template
from lmm.text.tokenize import tokenize_prompt


def prompt_ids(question, template: Template, tokenizer) -> list[int]:
    text = (IMAGE_TOKEN + "\n" + question.prompt) if question.has_image else question.prompt
    return tokenize_prompt(template.generation_prompt([], text), tokenizer)


def answer_questions(
    model: LlavaModel,
    tokenizer,
    template: Template,
    questions: Sequence,
    transform,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    model_id: str = "lmm",
    progress: Callable[[int, int], None] | None = None,
    on_batch: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Answer ``questions`` (objects with ``question_id``, ``prompt``, ``answer_prompt``, ``has_image``,
    ``load_image()``) in order; returns LLaVA answer-JSONL records. ``on_batch`` gets each batch's records as soon
    as they are generated (``eval.py`` writes them to disk, so an error in a later batch loses nothing)."""
    device = next(model.parameters()).device
    records: list[dict] = []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        examples = []
        for q in chunk:
            ids = prompt_ids(q, template, tokenizer)
            pixels, grids = transform_images(transform, [q.load_image()] if q.has_image else [])
            examples.append(Example(str(q.question_id), ids, ids, pixels, image_grids=grids))
        batch = collate(examples, tokenizer.pad_token_id, "left").to(device)
        with torch.inference_mode():
            out = model.generate(
                batch.input_ids,
                batch.attention_mask,
                batch.pixel_values,
                max_new_tokens,
                tokenizer.eos_token_id,
                tokenizer.pad_token_id,
                image_grids=batch.image_grids,
            )
        batch_records = [make_answer_record(q, tokenizer.decode(tokens, skip_special_tokens=True).strip(), model_id)
                         for q, tokens in zip(chunk, out)]
        records.extend(batch_records)
        if on_batch:
            on_batch(batch_records)
        if progress:
            progress(len(records), len(questions))
    return records
