"""``python -m lmm.interop export|import``: llava-hf folders from / to our model folders (see ``hf_folder``).

The output folder is written whole or not at all; it may not be the input, nor a non-empty folder without
``--overwrite`` (exit code 2 with the reason)."""

from __future__ import annotations

import argparse
import sys

from lmm.interop.hf_folder import export_llava_hf, import_llava_hf
from lmm.models.checkpoint import OutputFolderError, RemoteCodeRefused


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmm.interop", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="our model folder (plain or LoRA) → llava-hf folder")
    ex.add_argument("model_dir", help="a folder written by train.py (lmm_model.yaml, tokenizer/, weights)")
    ex.add_argument("out_dir", help="the llava-hf folder to write")
    ex.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                    help="weights dtype (auto: as stored)")
    ex.add_argument("--image-processor", default="auto", choices=["auto", "pad", "clip"],
                    help="pad: LlavaImageProcessor(do_pad=True) as LLaVA-1.5 training; clip: CLIPImageProcessor "
                         "(centre crop) as the official llava-hf folders; auto: from the model's image_aspect_ratio")
    ex.add_argument("--max-shard-size", default="5GB")
    im = sub.add_parser("import", help="llava-hf folder (e.g. llava-hf/llava-1.5-7b-hf) → our model folder")
    im.add_argument("hf_dir", help="a local llava-hf folder (config.json, *.safetensors, tokenizer, processor)")
    im.add_argument("out_dir", help="our model folder to write")
    im.add_argument("--max-length", type=int, default=2048)
    im.add_argument("--image-aspect-ratio", default="pad", choices=["pad", "square"],
                    help="preprocessing our evaluation uses for it (LLaVA-1.5 was trained with pad)")
    im.add_argument("--template", default="vicuna_v1")
    for p in (ex, im):
        p.add_argument("--overwrite", action="store_true",
                       help="replace a non-empty output folder (once the new one is complete)")
    ex.add_argument("--trust-remote-code", action="store_true",
                    help="allow checkpoints the model folder loads to run their own Python code (never from the folder)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "export":
            out = export_llava_hf(args.model_dir, args.out_dir, args.dtype, args.image_processor, args.max_shard_size,
                                  args.overwrite, args.trust_remote_code)
        else:
            out = import_llava_hf(args.hf_dir, args.out_dir, args.max_length, args.image_aspect_ratio, args.template,
                                  args.overwrite)
    except (OutputFolderError, RemoteCodeRefused, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
