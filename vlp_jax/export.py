"""Exports a training run's params for other users.

  python -m vlp_jax.export --workdir RUN --format hf-blip --output DIR [--step N]
  python -m vlp_jax.export --workdir RUN --format safetensors|msgpack --output FILE_OR_DIR

`safetensors` / `msgpack`: params only, flat names (`vlp_jax.convert.params_io`; a directory
gets `params.<ext>`); scanned layers are written unscanned (`layers_i`).

`hf-blip` (blip family runs with a tokenizer) writes two directories that transformers loads
with `from_pretrained`, each with its `BlipProcessor`:
  DIR/retrieval/    `BlipForImageTextRetrieval` (vision, text encoder, projections, ITM head)
  DIR/captioning/   `BlipForConditionalGeneration` (vision, decoder, LM head)
Our BLIP ties encoder and decoder except the self-attention: each HF model gets a copy of the
shared weights; the decoder's self-attention is our `causal_self_attention`. Text config
special ids: bos = [DEC], pad = [PAD], sep = eos = [SEP], vocab_size = the tokenizer's.
Processor: `BlipImageProcessor` settings from the run's eval preprocessing (size, mean/std;
`resample` bilinear like our `resize`, computed by PIL instead of TensorFlow, so images of
another size than the model's may differ slightly); the tokenizer gives our ids:
- WordPiece runs: `BertTokenizer` over the run's vocab.txt, with [DEC] (bos), [ENC], [IMG]
  added at our ids;
- SentencePiece runs: a `tokenizer.json` (Unigram model with our pieces and scores, or BPE
  with merges rebuilt from the pieces' order; the model's NFKC normalisation; Metaspace
  pre-tokenizer, splitting words unless pieces span them; `[CLS] $A [SEP]` template).
What differs in use (see `vlp_jax.pipelines`): our runs feed [ENC] first to the ITM encoder,
so with transformers set `input_ids[:, 0] = enc_id` (in `config.json` as
`text_config.enc_token_id`) for ITM; ITC and captioning need nothing special.
"""
import argparse
import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from vlp_jax.convert import params_io

PARAMS_FORMATS = ("safetensors", "msgpack")


def _run_config(workdir: str) -> Any:
  import ml_collections  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as stream:
    return ml_collections.ConfigDict(json.load(stream))


def export_params(workdir: str, output: str, fmt: str, step: int | None = None) -> str:
  """Writes the run's params (unscanned) as one `fmt` file; returns its path."""
  from vlp_jax.train.checkpoint import restore_params  # pylint: disable=g-import-not-at-top
  if fmt not in PARAMS_FORMATS:
    raise ValueError(f"unknown params format {fmt!r}; known: {PARAMS_FORMATS}")
  params, _ = restore_params(workdir, step)
  path = output if output.endswith("." + fmt) else os.path.join(output, f"params.{fmt}")
  params_io.save_params(path, params_io.unscan_layers(params))
  return path


def _wordpiece_hf_tokenizer(tokenizer: Any, directory: str) -> Any:
  """A transformers `BertTokenizer` giving our WordPiece ids ([DEC] = bos, [ENC], [IMG])."""
  from transformers import BertTokenizer  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  vocab_path = os.path.join(directory, "vocab.txt")
  with open(vocab_path, "w", encoding="utf-8") as stream:
    stream.write("".join(token + "\n" for token in tokenizer.vocab))
  hf = BertTokenizer(vocab_path, do_lower_case=tokenizer.lower_case)
  # Tokens missing from vocab.txt are appended in this order, as our tokenizer does.
  hf.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]", "[IMG]"]})
  ours = [tokenizer.dec_id, tokenizer.enc_id, tokenizer.img_id]
  if hf.convert_tokens_to_ids(["[DEC]", "[ENC]", "[IMG]"]) != ours:
    raise ValueError(f"HF tokenizer special ids differ from ours {ours}")
  return hf


def _bpe_merges(ids: dict[str, int]) -> list[tuple[str, str]]:
  """Merges that rebuild SentencePiece BPE from its vocabulary (piece -> id): every split of
  each piece into two pieces, ranked by the piece's id (SentencePiece merges the best-scored,
  i.e. lowest-id, piece first), then by the ids of the two halves."""
  merges = [(ids[piece], ids[piece[:cut]], ids[piece[cut:]], piece[:cut], piece[cut:])
            for piece in ids for cut in range(1, len(piece))
            if piece[:cut] in ids and piece[cut:] in ids]
  return [(left, right) for *_, left, right in sorted(merges)]


def _sentencepiece_hf_tokenizer(tokenizer: Any) -> Any:
  """A `PreTrainedTokenizerFast` giving our SentencePiece ids (tokenizers Unigram or BPE)."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
  from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
  from tokenizers.models import BPE, Unigram
  from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(tokenizer.model_proto)
  processor = spm.SentencePieceProcessor(model_proto=tokenizer.model_proto)
  pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
  if proto.trainer_spec.model_type == sentencepiece_model_pb2.TrainerSpec.BPE:
    ids = {piece: index for index, piece in enumerate(pieces)}
    hf = Tokenizer(BPE(ids, _bpe_merges(ids), unk_token=pieces[tokenizer.unk_id],
                       byte_fallback=False))
  else:
    vocab = [(piece, processor.get_score(i)) for i, piece in enumerate(pieces)]
    hf = Tokenizer(Unigram(vocab, unk_id=tokenizer.unk_id, byte_fallback=False))
  rule = proto.normalizer_spec.name
  steps = [normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap)] \
      if proto.normalizer_spec.precompiled_charsmap else []
  if rule not in ("nmt_nfkc", "nmt_nfkc_cf", "nfkc", "identity"):
    raise ValueError(f"SentencePiece normalizer {rule!r} is not supported")
  # SentencePiece's remove_extra_whitespaces: collapse runs of spaces, strip both ends.
  steps += [normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip()]
  hf.normalizer = normalizers.Sequence(steps)
  # Pieces may span words when the model was trained with split_by_whitespace=false.
  hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always",
                                              split=proto.trainer_spec.split_by_whitespace)
  hf.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
  cls, sep = "[CLS]", "[SEP]"
  hf.post_processor = processors.TemplateProcessing(
      single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B {sep}",
      special_tokens=[(cls, tokenizer.cls_id), (sep, tokenizer.sep_id)])
  return PreTrainedTokenizerFast(
      tokenizer_object=hf, bos_token="[DEC]", pad_token="[PAD]", unk_token="[UNK]",
      cls_token=cls, sep_token=sep, mask_token="[MASK]",
      additional_special_tokens=["[ENC]", "[IMG]"])


def export_hf_blip(workdir: str, output: str, step: int | None = None) -> dict[str, str]:
  """Writes `output/retrieval` and `output/captioning` (see the module docstring)."""
  import transformers  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  from vlp_jax import pipelines  # pylint: disable=g-import-not-at-top
  from vlp_jax.data.tokenizer import SentencePieceTokenizer  # pylint: disable=g-import-not-at-top
  from vlp_jax.models import blip_hf  # pylint: disable=g-import-not-at-top
  pipe = pipelines.load_run(workdir, step)
  config, tokenizer, image = pipe.config, pipe.tokenizer, pipe.image_settings
  image_processor = transformers.BlipImageProcessorPil(
      size={"height": image.height, "width": image.width}, resample=2,
      do_rescale=image.do_rescale, rescale_factor=image.rescale_factor,
      do_normalize=image.do_normalize, image_mean=list(image.mean), image_std=list(image.std))
  written = {}
  for kind, architecture in (("retrieval", "BlipForImageTextRetrieval"),
                             ("captioning", "BlipForConditionalGeneration")):
    directory = os.path.join(output, kind)
    os.makedirs(directory, exist_ok=True)
    hf_config = transformers.BlipConfig(**blip_hf.hf_config_from_blip(config))
    hf_config.text_config.enc_token_id = config.enc_id
    hf_config.text_config.cls_token_id = config.cls_id
    hf_config.architectures = [architecture]
    hf_config.save_pretrained(directory)
    state = blip_hf.blip_params_to_hf(config, pipe.params, kind)
    save_file({name: np.array(value, np.float32, order="C") for name, value in state.items()},
              os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    if isinstance(tokenizer, SentencePieceTokenizer):
      hf_tokenizer = _sentencepiece_hf_tokenizer(tokenizer)
    else:
      hf_tokenizer = _wordpiece_hf_tokenizer(tokenizer, directory)
    transformers.BlipProcessor(image_processor, hf_tokenizer).save_pretrained(directory)
    with open(os.path.join(directory, "vlp_export.json"), "w", encoding="utf-8") as stream:
      json.dump({"workdir": os.path.abspath(workdir), "model": dataclasses.asdict(config),
                 "itm_first_token_id": config.enc_id,
                 "caption_prompt": pipe.default_prompt}, stream, indent=2)
    written[kind] = directory
  return written


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m vlp_jax.export",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="training run directory")
  parser.add_argument("--format", required=True, choices=("hf-blip",) + PARAMS_FORMATS)
  parser.add_argument("--output", required=True)
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  args = parser.parse_args(argv)
  if args.format == "hf-blip":
    family = _run_config(args.workdir).model.family
    if family != "blip":
      parser.error(f"--format hf-blip needs a blip run, not {family!r}")
    for kind, directory in export_hf_blip(args.workdir, args.output, args.step).items():
      print(f"wrote {directory} ({kind})")
  else:
    print(f"wrote {export_params(args.workdir, args.output, args.format, args.step)}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
