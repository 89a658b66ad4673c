"""Checkpoint conversion into vlp_jax's format.

  python -m vlp_jax.convert hf-blip --input HF_DIR --output OUT_DIR

`hf-blip`: a Hugging Face BLIP directory (`BlipForImageTextRetrieval` or
`BlipForConditionalGeneration`, as `save_pretrained` writes it) -> params, model config,
tokenizer and image settings that `vlp_jax.pipelines.load(OUT_DIR)` reads
(see `vlp_jax.convert.hf_blip`).
"""
import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m vlp_jax.convert",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("source", choices=["hf-blip"], help="input checkpoint format")
  parser.add_argument("--input", required=True, help="input directory")
  parser.add_argument("--output", required=True, help="output directory")
  args = parser.parse_args(argv)
  from vlp_jax.convert import hf_blip  # pylint: disable=g-import-not-at-top
  spec = hf_blip.convert_hf_blip(args.input, args.output)
  print(f"wrote {args.output} ({spec['source']['architecture']}, tasks: "
        f"{', '.join(spec['tasks'])})")
  return 0
