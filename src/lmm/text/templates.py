"""Conversation templates of LLaVA-1.5 (``llava/conversation.py``), as data.

A template renders a conversation into a list of ``Segment``s: pieces of text, each marked as a training target
(an assistant reply plus its end-of-turn string) or not. The label mask is then a property of the segments, not
of length arithmetic on token counts (see :mod:`lmm.text.tokenize`).
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_TOKEN = "<image>"

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAMA_2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being "
    "safe.  Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal "
    "content. Please ensure that your responses are socially unbiased and positive in nature.\n\nIf a question "
    "does not make any sense, or is not factually coherent, explain why instead of answering something not "
    "correct. If you don't know the answer to a question, please don't share false information."
)
LLAVA_LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)


@dataclass(frozen=True)
class Segment:
    text: str
    target: bool


@dataclass(frozen=True)
class Template:
    """One LLaVA conversation template. ``style`` is LLaVA's ``SeparatorStyle`` (plain, two, llama_2)."""

    name: str
    style: str
    system: str = ""
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = " "
    sep2: str = "</s>"

    def render(self, turns: list[tuple[str, str]]) -> list[Segment]:
        """Render ``[(human, gpt), ...]`` for training; each reply (with its end-of-turn) is a target segment."""
        if self.style == "plain":
            return self._render_plain(turns)
        if self.style == "two":
            out = [Segment(self.system + self.sep, False)]
            for human, gpt in turns:
                out.append(Segment(f"{self.roles[0]}: {human}{self.sep}{self.roles[1]}:", False))
                # The space after "ASSISTANT:" is part of the target: SentencePiece glues it to the reply's first
                # token, which LLaVA trains on (its ``instruction_len - 2``).
                out.append(Segment(f" {gpt}{self.sep2}", True))
            return _merge(out)
        if self.style == "llama_2":
            out = []
            for i, (human, gpt) in enumerate(turns):
                if i == 0:
                    human = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n{human}"
                # LLaVA's ``ret.lstrip("<s>")`` drops the leading separator of the first turn.
                out.append(Segment(("" if i == 0 else self.sep) + f"[INST] {human} [/INST]", False))
                out.append(Segment(f" {gpt} {self.sep2}", True))
            return _merge(out)
        raise ValueError(f"unknown template style {self.style!r}")

    def _render_plain(self, turns: list[tuple[str, str]]) -> list[Segment]:
        # preprocess_plain: the human turn is replaced by "<image>" alone; the caption + "\n" is the target.
        if len(turns) != 1:
            raise ValueError(f"template 'plain' takes exactly one (image, caption) turn, got {len(turns)}")
        return [Segment(IMAGE_TOKEN, False), Segment(turns[0][1] + self.sep, True)]

    def generation_prompt(self, history: list[tuple[str, str]], question: str) -> str:
        """The prompt for generating the next reply: past turns, the new question, and the open assistant role."""
        if self.style == "plain":
            return IMAGE_TOKEN
        text = "".join(s.text for s in self.render(history)) if history else ""
        if self.style == "two":
            if not history:
                text = self.system + self.sep
            return text + f"{self.roles[0]}: {question}{self.sep}{self.roles[1]}:"
        if self.style == "llama_2":
            if not history:
                question = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n{question}"
            return text + ("" if not history else self.sep) + f"[INST] {question} [/INST]"
        raise ValueError(f"unknown template style {self.style!r}")


def _merge(segments: list[Segment]) -> list[Segment]:
    out: list[Segment] = []
    for s in segments:
        if out and out[-1].target == s.target:
            out[-1] = Segment(out[-1].text + s.text, s.target)
        elif s.text:
            out.append(s)
    return out


TEMPLATES: dict[str, Template] = {
    "plain": Template("plain", "plain", system="", roles=("", ""), sep="\n", sep2=""),
    "vicuna_v1": Template("vicuna_v1", "two", system=VICUNA_SYSTEM),
    "llama_2": Template("llama_2", "llama_2", system=LLAMA_2_SYSTEM, sep="<s>", sep2="</s>"),
    "llava_llama_2": Template("llava_llama_2", "llama_2", system=LLAVA_LLAMA_2_SYSTEM, sep="<s>", sep2="</s>"),
}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown template {name!r}; known: {sorted(TEMPLATES)}") from None
