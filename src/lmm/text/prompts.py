"""LLaVA-1.5's response-format prompts (paper §3.2 and Table 7, spec §2.3): appended to a question — in the 665K
mixture and in the benchmarks alike — to ask for the form of the answer."""

SHORT_ANSWER = "Answer the question using a single word or phrase."
OPTION_LETTER = "Answer with the option's letter from the given choices directly."
ONE_SENTENCE_CAPTION = "Provide a one-sentence caption for the provided image."
