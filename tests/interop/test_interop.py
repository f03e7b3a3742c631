"""llava-hf interop: export → transformers loads it with our logits; import (4.x / 5.x layouts) → export is lossless."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY_LLM, TINY_VISION
from PIL import Image
from safetensors.torch import load_file

from lmm.data.batch import Example, collate
from lmm.data.images import ImageTransform
from lmm.interop.__main__ import main as interop_main
from lmm.interop.hf_folder import export_llava_hf, import_llava_hf, read_llava_hf_weights
from lmm.interop.llava_hf import expand_image_markers, normalize_llava_hf_keys
from lmm.models.build import build_llava
from lmm.models.checkpoint import load_model_dir, save_model_dir
from lmm.text.templates import get_template
from lmm.text.tokenize import tokenize_conversation, tokenize_prompt

SPEC = {"model": {"vision": TINY_VISION, "connector": {"name": "mlp2x_gelu"}, "llm": TINY_LLM, "max_length": 512},
        "template": "vicuna_v1", "image_aspect_ratio": "pad", "max_length": 512}
CONVS = [
    [("<image>\nWhat color is the circle?\nAnswer the question using a single word or phrase.", "red")],
    [("<image>\nWhat is in the image?", "A red circle on the left and a blue square."), ("How many shapes?", "2")],
    [("Hi", "Hello there.")],
]


def _image(w, h, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _ours(tok, tmp_path, name="ours"):
    torch.manual_seed(0)
    model = build_llava(TINY_VISION, {"name": "mlp2x_gelu"}, TINY_LLM, 512, tok).eval()
    return model, save_model_dir(model, tok, SPEC, tmp_path / name)


def _batch(tok):
    t = get_template("vicuna_v1")
    exs = []
    for k, c in enumerate(CONVS):
        tk = tokenize_conversation(c, t, tok)
        exs.append(Example(str(k), tk.input_ids, tk.labels, torch.randn(1, 3, 28, 28) if k < 2 else None))
    return collate(exs, tok.pad_token_id, "right")


def _hf_logits(hf, batch, image_token_id, n_image_tokens):
    ids, mask, _ = expand_image_markers(batch.input_ids, batch.attention_mask, None, n_image_tokens, image_token_id)
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask, pixel_values=batch.pixel_values).logits, mask


def test_export_loads_in_transformers_with_our_logits(tiny_tokenizer, tmp_path):
    from transformers import LlavaForConditionalGeneration

    model, folder = _ours(tiny_tokenizer, tmp_path)
    out = export_llava_hf(folder, tmp_path / "hf")
    hf = LlavaForConditionalGeneration.from_pretrained(str(out), dtype=torch.float32).eval()
    V = len(tiny_tokenizer)
    assert hf.config.image_token_id == V == 1000 and hf.config.text_config.vocab_size == 1024  # padded to 64
    assert hf.config.vision_feature_select_strategy == "default" and hf.config.image_seq_length == 16
    emb = hf.get_input_embeddings().weight
    assert torch.equal(emb[:V], model.llm.get_input_embeddings().weight)
    assert torch.allclose(emb[V:], model.llm.get_input_embeddings().weight.mean(0).expand(1024 - V, -1))
    batch = _batch(tiny_tokenizer)
    with torch.no_grad():
        ours = model(batch.input_ids, batch.attention_mask, None, batch.pixel_values)
    theirs, mask = _hf_logits(hf, batch, V, model.num_image_tokens)
    valid = ours.attention_mask.bool()
    assert torch.equal(valid, mask.bool())
    assert torch.allclose(ours.logits[valid], theirs[valid][:, :V], atol=1e-5, rtol=0)
    # The added rows never win a greedy step (their logit is the mean logit).
    assert (theirs[valid][:, V:].max(-1).values < theirs[valid][:, :V].max(-1).values).all()


def test_exported_processor_matches_our_pipeline(tiny_tokenizer, tmp_path):
    from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

    model, folder = _ours(tiny_tokenizer, tmp_path)
    out = export_llava_hf(folder, tmp_path / "hf")
    proc = AutoProcessor.from_pretrained(str(out), backend="pil")  # PIL: the same bicubic as our pipeline
    assert type(proc.image_processor).__name__.startswith("LlavaImageProcessor") and proc.image_processor.do_pad
    t = get_template("vicuna_v1")
    q = "What color is the circle?"
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
    prompt = proc.apply_chat_template(msgs, add_generation_prompt=True)
    assert prompt == t.generation_prompt([], "<image>\n" + q)
    history = msgs + [{"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
                      {"role": "user", "content": "And the square?"}]
    assert proc.apply_chat_template(history) == "".join(s.text for s in t.render([("<image>\n" + q, "Red.")])) + \
        "USER: And the square? "
    sys_msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert proc.apply_chat_template(sys_msgs, add_generation_prompt=True) == "Be brief. USER: Hi ASSISTANT:"
    tok = AutoTokenizer.from_pretrained(str(out))  # lmms-eval's llava_hf: string content, tokenizer's template
    assert tok.apply_chat_template([{"role": "user", "content": "<image>\n" + q}], tokenize=False,
                                   add_generation_prompt=True) == prompt

    img = _image(50, 31, 0)  # not square: padded, as in training
    inputs = proc(text=prompt, images=img, return_tensors="pt")
    ids = tokenize_prompt(prompt, tiny_tokenizer)
    ours_ids, _, _ = expand_image_markers(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), None,
                                          model.num_image_tokens, proc.image_token_id)
    assert torch.equal(inputs["input_ids"], ours_ids)
    pixels = ImageTransform(28, "pad")(img)
    assert torch.allclose(inputs["pixel_values"][0], pixels, atol=1e-6)
    # Greedy generation through transformers equals ours.
    hf = LlavaForConditionalGeneration.from_pretrained(str(out), dtype=torch.float32).eval()
    gen = hf.generate(**inputs, max_new_tokens=6, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
    b = collate([Example("q", ids, ids, pixels.unsqueeze(0))], tiny_tokenizer.pad_token_id, "left")
    mine = model.generate(b.input_ids, b.attention_mask, b.pixel_values, max_new_tokens=6, eos_token_id=None,
                          pad_token_id=tiny_tokenizer.pad_token_id)[0]
    assert gen == mine
    clip = export_llava_hf(folder, tmp_path / "hf_clip", image_processor="clip")
    assert type(AutoProcessor.from_pretrained(str(clip)).image_processor).__name__.startswith("CLIPImageProcessor")


def test_import_export_round_trip_is_lossless(tiny_tokenizer, tmp_path):
    model, folder = _ours(tiny_tokenizer, tmp_path)
    interop_main(["export", str(folder), str(tmp_path / "hf1")])
    interop_main(["import", str(tmp_path / "hf1"), str(tmp_path / "imported"), "--max-length", "512"])
    interop_main(["export", str(tmp_path / "imported"), str(tmp_path / "hf2")])
    a, b = read_llava_hf_weights(tmp_path / "hf1"), read_llava_hf_weights(tmp_path / "hf2")
    assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    c1, c2 = (json.loads((tmp_path / d / "config.json").read_text()) for d in ("hf1", "hf2"))
    assert c1 == c2
    imported, tok, spec = load_model_dir(tmp_path / "imported")
    assert len(tok) == 1001 and imported.llm.config.vocab_size == 1024 and spec["image_aspect_ratio"] == "pad"
    batch = _batch(tiny_tokenizer)
    with torch.no_grad():
        x = model(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values)
        y = imported(batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values)
    valid = x.attention_mask.bool()
    assert torch.equal(x.logits[valid], y.logits[valid][:, :1000])
    assert tokenize_conversation(CONVS[1], get_template("vicuna_v1"), tok).input_ids == \
        tokenize_conversation(CONVS[1], get_template("vicuna_v1"), tiny_tokenizer).input_ids


def _llava_hf_folder(tok, path):
    """A tiny folder in the layout of llava-hf/llava-1.5-7b-hf: transformers 4.x weight names, fp16, two shards,
    `<image>` = 1000 and `<pad>` = 1001 added, vocabulary padded to 1024, CLIPImageProcessor (centre crop)."""
    from safetensors.torch import save_file
    from transformers import (
        AddedToken,
        AutoTokenizer,
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from lmm.text.tokenizer import save_tokenizer

    save_tokenizer(tok, path / "tok_src")
    t = AutoTokenizer.from_pretrained(str(path / "tok_src"))
    t.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    t.add_special_tokens({"pad_token": "<pad>"})
    cfg = LlavaConfig(vision_config={**TINY_VISION["config"], "model_type": "clip_vision_model"},
                      text_config={**TINY_LLM["config"], "model_type": "llama", "vocab_size": 1024,
                                   "pad_token_id": 1001}, image_token_id=1000, image_seq_length=16)
    torch.manual_seed(1)
    hf = LlavaForConditionalGeneration(cfg).to(torch.float16)
    legacy = {}
    for k, v in hf.state_dict().items():
        k = k.replace("model.language_model.", "language_model.model.").replace("lm_head.", "language_model.lm_head.")
        legacy[k.replace("model.vision_tower.", "vision_tower.").replace("model.multi_modal_projector.",
                                                                         "multi_modal_projector.")] = v
    keys = sorted(legacy)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    out = path / "llava-1.5-tiny-hf"
    out.mkdir()
    for name, ks in shards.items():
        save_file({k: legacy[k].contiguous() for k in ks}, str(out / name), metadata={"format": "pt"})
    weight_map = {k: n for n, ks in shards.items() for k in ks}
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cfg.dtype = torch.float16
    cfg.save_pretrained(str(out))
    size = {"shortest_edge": 28}
    LlavaProcessor(CLIPImageProcessor(size=size, crop_size={"height": 28, "width": 28}), t, patch_size=7,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1).save_pretrained(str(out))
    return out, hf


def test_import_llava_hf_layout_then_export(tiny_tokenizer, tmp_path):
    from transformers import LlavaForConditionalGeneration

    src, hf16 = _llava_hf_folder(tiny_tokenizer, tmp_path)
    dst = import_llava_hf(src, tmp_path / "ours", max_length=512)
    model, tok, spec = load_model_dir(dst)
    assert spec["llava_hf"] == {"image_token_id": 1000, "dtypes": ["float16"]}
    assert tok.convert_tokens_to_ids("<image>") == 1000 and tok.pad_token_id == 1001
    assert load_file(str(dst / "model.safetensors"))["llm.lm_head.weight"].dtype == torch.float16
    hf = LlavaForConditionalGeneration.from_pretrained(str(src), dtype=torch.float32).eval()  # 4.x names, loaded
    batch = _batch(tiny_tokenizer)
    with torch.no_grad():
        ours = model(batch.input_ids, batch.attention_mask, None, batch.pixel_values)
    theirs, _ = _hf_logits(hf, batch, 1000, model.num_image_tokens)
    valid = ours.attention_mask.bool()
    assert torch.allclose(ours.logits[valid], theirs[valid], atol=1e-5, rtol=0)
    back = export_llava_hf(dst, tmp_path / "hf_again")  # dtype auto = float16, as imported
    orig = normalize_llava_hf_keys(read_llava_hf_weights(src))
    again = read_llava_hf_weights(back)
    assert orig.keys() == again.keys()
    assert all(again[k].dtype == torch.float16 and torch.equal(orig[k], again[k]) for k in orig)


def test_export_errors(tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    hd = build_llava(TINY_VISION, {"name": "mlp2x_gelu"}, TINY_LLM, 512, tiny_tokenizer, hd={"enabled": True})
    spec = {**SPEC, "model": {**SPEC["model"], "hd": {"enabled": True}}}
    with pytest.raises(ValueError, match="HD has no llava-hf equivalent"):
        export_llava_hf(save_model_dir(hd, tiny_tokenizer, spec, tmp_path / "hd"), tmp_path / "x")
    lin = build_llava(TINY_VISION, {"name": "linear"}, TINY_LLM, 512, tiny_tokenizer)
    spec = {**SPEC, "model": {**SPEC["model"], "connector": {"name": "linear"}}}
    with pytest.raises(ValueError, match="mlp2x_gelu"):
        export_llava_hf(save_model_dir(lin, tiny_tokenizer, spec, tmp_path / "lin"), tmp_path / "y")
    _, folder = _ours(tiny_tokenizer, tmp_path)
    with pytest.raises(ValueError, match="dtype must be"):
        export_llava_hf(folder, tmp_path / "z", dtype="int8")


def test_export_merges_a_lora_folder(tiny_tokenizer, tmp_path):
    from transformers import LlavaForConditionalGeneration

    from lmm.training.stages import apply_stage

    torch.manual_seed(0)
    model = build_llava(TINY_VISION, {"name": "mlp2x_gelu"}, TINY_LLM, 512, tiny_tokenizer)
    apply_stage(model, ["connector", "llm"], {"r": 8, "alpha": 16, "dropout": 0.05})
    with torch.no_grad():
        for p in model.llm.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    model.eval()
    folder = save_model_dir(model, tiny_tokenizer, SPEC, tmp_path / "lora")
    out = export_llava_hf(folder, tmp_path / "hf")
    hf = LlavaForConditionalGeneration.from_pretrained(str(out), dtype=torch.float32).eval()
    batch = _batch(tiny_tokenizer)
    with torch.no_grad():
        ours = model(batch.input_ids, batch.attention_mask, None, batch.pixel_values)
    theirs, _ = _hf_logits(hf, batch, 1000, model.num_image_tokens)
    valid = ours.attention_mask.bool()
    assert torch.allclose(ours.logits[valid], theirs[valid][:, :1000], atol=1e-5, rtol=0)
