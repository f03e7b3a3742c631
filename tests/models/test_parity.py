"""Same weights → same logits and loss as transformers' LlavaForConditionalGeneration (fp32, ≤ 1e-5)."""

import torch
from conftest import TINY_LLM, TINY_VISION

from lmm.data.batch import Example, collate
from lmm.interop.llava_hf import build_llava_hf, expand_image_markers
from lmm.models.build import build_llava
from lmm.text.templates import get_template
from lmm.text.tokenize import tokenize_conversation


def test_logits_and_loss_equal_transformers_llava(tiny_tokenizer):
    torch.manual_seed(0)
    ours = build_llava(TINY_VISION, {"name": "mlp2x_gelu"}, TINY_LLM, 2048, tiny_tokenizer).eval()
    hf = build_llava_hf(ours).eval()
    t = get_template("vicuna_v1")
    convs = [
        [("<image>\nWhat color is the circle?\nAnswer the question using a single word or phrase.", "red")],
        [("<image>\nWhat is in the image?", "There is a red circle on the left and a blue square on the right."),
         ("How many shapes?", "2")],
        [("<image>\nHi", "Hello there.")],
    ]
    examples = []
    for k, c in enumerate(convs):
        tok = tokenize_conversation(c, t, tiny_tokenizer)
        examples.append(Example(str(k), tok.input_ids, tok.labels, torch.randn(1, 3, 28, 28)))
    assert len({len(e.input_ids) for e in examples}) == 3  # different text lengths → real padding
    batch = collate(examples, tiny_tokenizer.pad_token_id, "right")
    with torch.no_grad():
        out = ours(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values)
        ids, mask, labels = expand_image_markers(batch.input_ids, batch.attention_mask, batch.labels,
                                                 ours.num_image_tokens, hf.config.image_token_id)
        ref = hf(input_ids=ids, attention_mask=mask, pixel_values=batch.pixel_values, labels=labels)
    valid = out.attention_mask.bool()
    assert torch.equal(valid, mask.bool())
    assert torch.allclose(out.logits[valid], ref.logits[valid], atol=1e-5, rtol=0)
    assert abs(out.loss.item() - ref.loss.item()) <= 1e-5
