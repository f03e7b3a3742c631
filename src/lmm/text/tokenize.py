"""Conversation → (input_ids, labels), with labels by construction.

The text is tokenized exactly as LLaVA's ``tokenizer_image_token`` does (split on ``<image>``, each chunk
tokenized on its own, one BOS kept, the marker id -200 between chunks), so the ids equal the official ones.
Labels come from character offsets: a token is trained when its characters overlap a target segment (an
assistant reply and its end-of-turn string). Nothing depends on the token counts of sub-strings, which is what
breaks LLaVA's length arithmetic across tokenizer versions ("tokenization mismatch" → loss 0).
"""

from __future__ import annotations

from dataclasses import dataclass

from lmm.text.templates import IMAGE_TOKEN, Segment, Template

IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]

    @property
    def n_targets(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def _target_spans(segments: list[Segment]) -> tuple[str, list[tuple[int, int]]]:
    text, spans, pos = "", [], 0
    for seg in segments:
        if seg.target:
            spans.append((pos, pos + len(seg.text)))
        text += seg.text
        pos += len(seg.text)
    return text, spans


def tokenize_segments(segments: list[Segment], tokenizer) -> Tokenized:
    """Tokenize rendered segments; every ``<image>`` becomes one ``IMAGE_TOKEN_INDEX``."""
    text, spans = _target_spans(segments)
    bos = tokenizer.bos_token_id
    ids: list[int] = []
    labels: list[int] = []
    chunk_start = 0
    for k, chunk in enumerate(text.split(IMAGE_TOKEN)):
        if k > 0:
            ids.append(IMAGE_TOKEN_INDEX)
            labels.append(IGNORE_INDEX)
        enc = tokenizer(chunk, add_special_tokens=True, return_offsets_mapping=True)
        chunk_ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        if k > 0 and chunk_ids and bos is not None and chunk_ids[0] == bos and offsets[0][1] == 0:
            chunk_ids, offsets = chunk_ids[1:], offsets[1:]
        for tid, (s, e) in zip(chunk_ids, offsets):
            s, e = s + chunk_start, e + chunk_start
            is_target = e > s and any(s < te and e > ts for ts, te in spans)
            ids.append(tid)
            labels.append(tid if is_target else IGNORE_INDEX)
        chunk_start += len(chunk) + len(IMAGE_TOKEN)
    return Tokenized(ids, labels)


def tokenize_conversation(turns: list[tuple[str, str]], template: Template, tokenizer) -> Tokenized:
    """Render ``[(human, gpt), ...]`` with ``template`` and tokenize it with labels on the replies only."""
    return tokenize_segments(template.render(turns), tokenizer)


def tokenize_prompt(prompt: str, tokenizer) -> list[int]:
    """Ids of a generation prompt (``<image>`` → ``IMAGE_TOKEN_INDEX``), as ``tokenizer_image_token``."""
    return tokenize_segments([Segment(prompt, False)], tokenizer).input_ids
