"""The official judge prompts, verbatim (they are part of the metric: change a character, change the score).

* LLaVA-Bench-in-the-Wild: ``llava/eval/eval_gpt_review_bench.py`` (system message) and
  ``llava/eval/table/rule.json`` (``llava_bench_conv`` / ``_detail`` / ``_complex`` share one rule text).
* MM-Vet: the few-shot grading table of ``yuweihao/MM-Vet`` ``mm-vet_evaluator.py``.
"""

from __future__ import annotations

__all__ = [
    "LLAVA_W_RULES",
    "LLAVA_W_SYSTEM",
    "MMVET_PROMPT",
    "MMVET_RETRY_SUFFIX",
    "llava_wild_user_message",
    "mmvet_query",
]

LLAVA_W_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."

_LLAVA_BENCH_RULE = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user "
    "question displayed above. The user asks the question on observing an image. For your reference, the visual "
    "content in the image is represented with a few sentences describing the image. \n"
    "Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant "
    "receives an overall score on a scale of 1 to 10, where a higher score indicates better overall performance.\n"
    "Please first output a single line containing only two values indicating the scores for Assistant 1 and 2, "
    "respectively. The two scores are separated by a space.\n"
    "In the subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any "
    "potential bias and ensuring that the order in which the responses were presented does not affect your "
    "judgment."
)
LLAVA_W_RULES: dict[str, dict[str, str]] = {
    f"llava_bench_{category}": {"role": "Assistant", "prompt": _LLAVA_BENCH_RULE}
    for category in ("conv", "detail", "complex")
}


def llava_wild_user_message(
    context: str, question: str, answer1: str, answer2: str, rule: dict[str, str]
) -> str:
    """The user message of ``eval_gpt_review_bench.py`` (Assistant 1 = GPT-4 reference, 2 = the model)."""
    role, prompt = rule["role"], rule["prompt"]
    return (
        f"[Context]\n{context}\n\n"
        f"[Question]\n{question}\n\n"
        f"[{role} 1]\n{answer1}\n\n[End of {role} 1]\n\n"
        f"[{role} 2]\n{answer2}\n\n[End of {role} 2]\n\n"
        f"[System]\n{prompt}\n\n"
    )


_MEME_GT = (
    "This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. "
    "Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in "
    "ice and snow. The meme is saying that the person has trust issues because the names of these countries do "
    "not accurately represent their landscapes."
)
MMVET_PROMPT = (
    "Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. "
    "<AND> in the ground truth means it is totally right only when all elements in the ground truth are present "
    "in the prediction, and <OR> means it is totally right when any one element in the ground truth is present "
    "in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, "
    "0.9, or 1.0 (totally right). Just complete the last space of the correctness score.\n"
    "\n"
    "Question | Ground truth | Prediction | Correctness\n"
    "--- | --- | --- | ---\n"
    "What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0\n"
    "What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5\n"
    "What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5\n"
    "What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5\n"
    "What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0\n"
    f"Can you explain this meme? | {_MEME_GT} | The meme talks about Iceland and Greenland. It's pointing out "
    "that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4\n"
    f"Can you explain this meme? | {_MEME_GT} | The meme is using humor to point out the misleading nature of "
    "Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is "
    "mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that "
    "these contradictions can lead to distrust or confusion. The humor in this meme is derived from the "
    "unexpected contrast between the names of the countries and their actual physical characteristics. | 1.0\n"
)
MMVET_RETRY_SUFFIX = "\nPredict the correctness of the answer (digit): "


def mmvet_query(question: str, answer: str, prediction: str, prompt: str = MMVET_PROMPT) -> str:
    """The grading request: the few-shot table, then ``question | GT (with spaced <AND>/<OR>) | prediction | ``."""
    gt = answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    return prompt + "\n" + " | ".join([question, gt, prediction, ""])
