"""LLaVA's own label algorithm (llava/train/train.py: preprocess_plain / preprocess_v1 / preprocess_llama_2 and
llava/mm_utils.py: tokenizer_image_token), restated from the official code as the test oracle: length arithmetic on
sub-string token counts. Our labels (character offsets) must equal what this gives on a legacy Llama tokenizer."""

IGNORE_INDEX, IMAGE_TOKEN_INDEX = -100, -200


def tokenizer_image_token(prompt, tokenizer):
    chunks = [tokenizer(c).input_ids for c in prompt.split("<image>")]
    ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    seps = [IMAGE_TOKEN_INDEX] * (offset + 1)
    joined = [x for sub in zip(chunks, [seps] * len(chunks)) for x in sub][:-1]
    for x in joined:
        ids.extend(x[offset:])
    return ids


def _tok_len(text, tokenizer, has_image):
    return len(tokenizer_image_token(text, tokenizer)) if has_image else len(tokenizer(text).input_ids)


def official_v1(prompt, tokenizer, has_image, sep=" ASSISTANT: ", sep2="</s>"):
    ids = tokenizer_image_token(prompt, tokenizer) if has_image else tokenizer(prompt).input_ids
    target = list(ids)
    total = sum(1 for t in ids if t != tokenizer.pad_token_id)
    rounds = prompt.split(sep2)
    cur = 1
    target[:cur] = [IGNORE_INDEX] * cur
    for i, rou in enumerate(rounds):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len = _tok_len(rou, tokenizer, has_image)
        instruction_len = _tok_len(parts[0], tokenizer, has_image) - 2
        if i != 0 and not getattr(tokenizer, "legacy", True):
            round_len -= 1
            instruction_len -= 1
        target[cur:cur + instruction_len] = [IGNORE_INDEX] * len(target[cur:cur + instruction_len])
        cur += round_len
    target[cur:] = [IGNORE_INDEX] * len(target[cur:])
    if cur != total:
        target = [IGNORE_INDEX] * len(target)  # "tokenization mismatch" → the whole sample is masked
    return ids, target


def official_llama_2(prompt, tokenizer, has_image):
    ids = tokenizer_image_token(prompt, tokenizer) if has_image else tokenizer(prompt).input_ids
    target = list(ids)
    total = sum(1 for t in ids if t != tokenizer.pad_token_id)
    sep = "[/INST] "
    cur = 1
    target[:cur] = [IGNORE_INDEX]
    for rou in prompt.split("</s>"):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len = _tok_len(rou, tokenizer, has_image)
        instruction_len = _tok_len(parts[0], tokenizer, has_image) - 2
        target[cur:cur + instruction_len] = [IGNORE_INDEX] * len(target[cur:cur + instruction_len])
        cur += round_len
    target[cur:] = [IGNORE_INDEX] * len(target[cur:])
    if cur != total:
        target = [IGNORE_INDEX] * len(target)
    return ids, target


def official_plain(caption, tokenizer):
    conversation = "<image>" + caption + "\n"
    ids = tokenizer_image_token(conversation, tokenizer)
    target = list(ids)
    n = len(tokenizer_image_token("<image>", tokenizer))
    target[:n] = [IGNORE_INDEX] * n
    return ids, target


def official_prompt_v1(system, turns):
    """conv_vicuna_v1.get_prompt() (SeparatorStyle.TWO) for [(human, gpt), ...]."""
    ret = system + " "
    for human, gpt in turns:
        ret += "USER: " + human + " " + "ASSISTANT: " + gpt + "</s>"
    return ret


def official_prompt_llama_2(system, turns):
    """conv_llava_llama_2.get_prompt() (SeparatorStyle.LLAMA_2)."""
    ret = ""
    for i, (human, gpt) in enumerate(turns):
        if i == 0:
            human = f"<<SYS>>\n{system}\n<</SYS>>\n\n" + human
        ret += "<s>" + f"[INST] {human} [/INST]"
        ret += " " + gpt + " " + "</s>"
    return ret.lstrip("<s>")
