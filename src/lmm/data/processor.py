"""Sample → example: a validated record and its images become token ids, labels and pixel tensors.

This is the sample → batch path shared by every data source (the map-style JSON reader and the WebDataset shard
loader): it knows nothing of where records come from.
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from lmm.data.batch import Example
from lmm.data.hd_cells import transform_images
from lmm.data.images import ImageTransform
from lmm.data.records import Record, RecordError
from lmm.text.templates import Template
from lmm.text.tokenize import tokenize_conversation


class SampleProcessor:
    def __init__(self, tokenizer, template: Template, image_transform: ImageTransform,  # or HDImageTransform
                 prompt_policy: Callable[[Record], Record] | None = None):
        self.tokenizer = tokenizer
        self.template = template
        self.image_transform = image_transform
        self.prompt_policy = prompt_policy

    def __call__(self, record: Record, images: list[Image.Image], source: str = "") -> Example:
        if len(images) != len(record.images):
            raise RecordError(record.id, "missing_image", f"{len(record.images)} expected, {len(images)} given")
        if self.prompt_policy is not None:
            record = self.prompt_policy(record)
        turns = record.turns
        if self.template.style == "plain":
            if len(images) != 1:
                raise RecordError(record.id, "plain_needs_one_image", "stage-1 captions need exactly one image")
            turns = turns[:1]
        tok = tokenize_conversation(turns, self.template, self.tokenizer)
        pixels, grids = transform_images(self.image_transform, images)
        return Example(record.id, tok.input_ids, tok.labels, pixels, source, grids)
