"""Text tokenizers: SentencePiece trained on captions, and BERT WordPiece from a `vocab.txt`.

Both kinds share one interface (`Tokenizer`): an in-graph `tokenize` (tensorflow_text, no
`tf.py_function`, so tf.data iterators stay checkpointable), python `encode` / `decode`,
`vocab_size` and the special token ids as attributes. `tokenize` and `encode` add no
special tokens; the input pipeline adds [CLS]/[SEP] (or [DEC], ...) itself.

Special tokens and their ids:

| token  | SentencePiece | WordPiece (bert-base-uncased vocab)  |
|--------|---------------|--------------------------------------|
| [PAD]  | 0             | id in vocab.txt (must be 0)          |
| [UNK]  | 1             | id in vocab.txt (100)                |
| [CLS]  | 2             | id in vocab.txt (101)                |
| [SEP]  | 3             | id in vocab.txt (102)                |
| [MASK] | 4             | id in vocab.txt (103)                |
| [ENC]  | 5             | id in vocab.txt, else appended       |
| [DEC]  | 6             | id in vocab.txt, else appended       |
| [IMG]  | 7             | id in vocab.txt, else appended       |

SentencePiece: pad and unk through the trainer options, [CLS]..[IMG] as user-defined
symbols (a literal "[MASK]" in the text therefore encodes to the mask id); no bos/eos.
WordPiece: [PAD], [UNK], [CLS], [SEP] and [MASK] must be in the vocab file; [DEC], [ENC],
[IMG] missing from it are appended after it in that order, as BLIP does (bert-base-uncased:
[DEC] = 30522, [ENC] = 30523, [IMG] = 30524). Appended ids never come out of `tokenize`.

`decode` drops every special token (like `skip_special_tokens=True` in transformers).

Train a SentencePiece model from a TFDS dataset's captions:
  python -m vlp_jax.data.tokenizer train --dataset shapes/64px --data_dir DIR \
      --vocab_size 1000 --output tokenizer.model
"""
import abc
import argparse
import io
import os
import unicodedata
from collections.abc import Iterable, Sequence

import sentencepiece as spm
import tensorflow as tf
import tensorflow_text as tf_text

PAD, UNK, CLS, SEP, MASK, ENC, DEC, IMG = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[ENC]", "[DEC]", "[IMG]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK, ENC, DEC, IMG)
_WORDPIECE_REQUIRED = (PAD, UNK, CLS, SEP, MASK)
_WORDPIECE_APPENDED = (DEC, ENC, IMG)


class Tokenizer(abc.ABC):
  """Text <-> int32 ids; special token ids as attributes (`pad_id` is always 0)."""

  pad_id: int
  unk_id: int
  cls_id: int
  sep_id: int
  mask_id: int
  enc_id: int
  dec_id: int
  img_id: int
  vocab_size: int

  def _set_special_ids(self, ids: dict[str, int]) -> None:
    for token in SPECIAL_TOKENS:
      setattr(self, token.strip("[]").lower() + "_id", ids[token])
    if self.pad_id != 0:
      raise ValueError(f"[PAD] must have id 0, got {self.pad_id}")
    self.special_ids = frozenset(ids.values())

  @abc.abstractmethod
  def tokenize(self, texts: tf.Tensor) -> tf.RaggedTensor | tf.Tensor:
    """In-graph: tf.string [...] (rank >= 1) -> RaggedTensor int32 [..., (T)]; scalar -> [T]."""

  @abc.abstractmethod
  def encode(self, text: str) -> list[int]:
    """Python: text -> ids (no special tokens added)."""

  @abc.abstractmethod
  def decode(self, ids: Iterable[int]) -> str:
    """Python: ids -> text, special tokens dropped."""

  def _drop_specials(self, ids: Iterable[int]) -> list[int]:
    return [int(i) for i in ids if int(i) not in self.special_ids]


def _tokenize_rank1(tokenize_fn, texts: tf.Tensor) -> tf.RaggedTensor | tf.Tensor:
  """Applies a [N] -> ragged [N, (T)] tokenizer to any rank (scalar -> dense [T])."""
  texts = tf.convert_to_tensor(texts, tf.string)
  if texts.shape.rank == 0:
    return tokenize_fn(texts[tf.newaxis])[0]
  if texts.shape.rank == 1:
    return tokenize_fn(texts)
  result = tokenize_fn(tf.reshape(texts, [-1]))
  shape = tf.shape(texts, out_type=tf.int64)
  for axis in reversed(range(1, texts.shape.rank)):
    result = tf.RaggedTensor.from_uniform_row_length(result, shape[axis])
  return result


class SentencePieceTokenizer(Tokenizer):
  """SentencePiece model (serialized proto); specials are ids 0..7 (see module docstring)."""

  def __init__(self, model_proto: bytes):
    self.model_proto = model_proto
    self._processor = spm.SentencePieceProcessor(model_proto=model_proto)
    pieces = {self._processor.id_to_piece(i): i for i in range(self._processor.get_piece_size())}
    ids = {PAD: self._processor.pad_id(), UNK: self._processor.unk_id()}
    ids.update({token: pieces[token] for token in SPECIAL_TOKENS[2:]})
    if [ids[t] for t in SPECIAL_TOKENS] != list(range(len(SPECIAL_TOKENS))):
      raise ValueError(f"SentencePiece model has special ids {ids}, expected 0..7; "
                       "train it with `train_sentencepiece`.")
    self._set_special_ids(ids)
    self.vocab_size = self._processor.get_piece_size()
    self._tf_tokenizer = tf_text.SentencepieceTokenizer(model=model_proto, out_type=tf.int32)

  @classmethod
  def from_file(cls, path: str) -> "SentencePieceTokenizer":
    with tf.io.gfile.GFile(path, "rb") as f:
      return cls(f.read())

  def tokenize(self, texts: tf.Tensor) -> tf.RaggedTensor | tf.Tensor:
    return _tokenize_rank1(self._tf_tokenizer.tokenize, texts)

  def encode(self, text: str) -> list[int]:
    return self._processor.encode(text)

  def decode(self, ids: Iterable[int]) -> str:
    return self._processor.decode(self._drop_specials(ids))


def train_sentencepiece(texts: Iterable[str], vocab_size: int, output: str | None = None, *,
                        model_type: str = "unigram", lower_case: bool = False,
                        split_by_whitespace: bool = True) -> SentencePieceTokenizer:
  """Trains a SentencePiece model on `texts` (deterministic for the same input).

  `vocab_size` is an upper bound (a small corpus may give fewer pieces). With `lower_case`
  the model case-folds its input (`nmt_nfkc_cf`). With `split_by_whitespace=False` pieces
  may span words ("▁in▁the▁top▁left"): templated captions take far fewer tokens (shapes,
  BPE 300: median 25 instead of 43). Writes the model to `output` if given.
  """
  writer = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=(t for t in texts if t.strip()),
      model_writer=writer,
      vocab_size=vocab_size,
      model_type=model_type,
      pad_id=0, unk_id=1, bos_id=-1, eos_id=-1,
      pad_piece=PAD, unk_piece=UNK,
      user_defined_symbols=list(SPECIAL_TOKENS[2:]),
      normalization_rule_name="nmt_nfkc_cf" if lower_case else "nmt_nfkc",
      character_coverage=1.0,
      hard_vocab_limit=False,
      input_sentence_size=0, shuffle_input_sentence=False,
      split_by_whitespace=split_by_whitespace,
      max_sentencepiece_length=16 if split_by_whitespace else 32,  # 16: SentencePiece's default
      num_threads=1, minloglevel=2)
  model_proto = writer.getvalue()
  if output:
    tf.io.gfile.makedirs(os.path.dirname(output) or ".")
    with tf.io.gfile.GFile(output, "wb") as f:
      f.write(model_proto)
  return SentencePieceTokenizer(model_proto)


# Spaces that BERT decoding removes before punctuation and contractions (as transformers does).
_DECODE_CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                    (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


class WordPieceTokenizer(Tokenizer):
  """BERT WordPiece from a vocab (one token a line); matches transformers' `BertTokenizer`.

  In-graph through `tensorflow_text.FastBertTokenizer`; python `encode` is a plain
  reimplementation of BERT's basic tokenizer + greedy longest-match WordPiece. Special
  token strings inside the text are not recognised (they split at the brackets).
  """

  def __init__(self, vocab: Sequence[str], lower_case: bool = True, max_chars_per_word: int = 100):
    self.vocab = list(vocab)
    self.lower_case = lower_case
    self.max_chars_per_word = max_chars_per_word
    self._token_to_id = {token: i for i, token in enumerate(self.vocab)}
    missing = [t for t in _WORDPIECE_REQUIRED if t not in self._token_to_id]
    if missing:
      raise ValueError(f"vocab lacks required special tokens {missing}")
    ids = {t: self._token_to_id[t] for t in SPECIAL_TOKENS if t in self._token_to_id}
    self._id_to_token = dict(enumerate(self.vocab))
    for token in _WORDPIECE_APPENDED:
      if token not in ids:
        ids[token] = len(self._id_to_token)
        self._id_to_token[ids[token]] = token
    self._set_special_ids(ids)
    self.vocab_size = len(self._id_to_token)
    self._tf_tokenizer = tf_text.FastBertTokenizer(
        vocab=self.vocab, token_out_type=tf.int32, unknown_token=UNK,
        lower_case_nfd_strip_accents=lower_case, max_bytes_per_word=4 * max_chars_per_word)

  @classmethod
  def from_file(cls, path: str, lower_case: bool = True) -> "WordPieceTokenizer":
    with tf.io.gfile.GFile(path, "r") as f:
      return cls([line.rstrip("\n") for line in f.readlines()], lower_case=lower_case)

  def tokenize(self, texts: tf.Tensor) -> tf.RaggedTensor | tf.Tensor:
    return _tokenize_rank1(self._tf_tokenizer.tokenize, texts)

  def encode(self, text: str) -> list[int]:
    return [i for word in _bert_basic_split(text, self.lower_case) for i in self._wordpiece(word)]

  def decode(self, ids: Iterable[int]) -> str:
    tokens = [self._id_to_token[i] for i in self._drop_specials(ids)]
    text = " ".join(tokens).replace(" ##", "").strip()
    for spaced, joined in _DECODE_CLEAN_UP:
      text = text.replace(spaced, joined)
    return text

  def _wordpiece(self, word: str) -> list[int]:
    if len(word) > self.max_chars_per_word:
      return [self.unk_id]
    ids, start = [], 0
    while start < len(word):
      for end in range(len(word), start, -1):
        piece = word[start:end] if start == 0 else "##" + word[start:end]
        if piece in self._token_to_id:
          ids.append(self._token_to_id[piece])
          start = end
          break
      else:
        return [self.unk_id]
    return ids


def _bert_basic_split(text: str, lower_case: bool) -> list[str]:
  """BERT's basic tokenizer: clean, split CJK / whitespace / punctuation, optional lower + strip accents."""
  cleaned = []
  for char in text:
    code = ord(char)
    if code == 0 or code == 0xFFFD or _is_control(char):
      continue
    if _is_whitespace(char):
      cleaned.append(" ")
    elif _is_cjk(code):
      cleaned.append(f" {char} ")
    else:
      cleaned.append(char)
  words = []
  for word in "".join(cleaned).split():
    if lower_case:
      word = "".join(c for c in unicodedata.normalize("NFD", word.lower()) if unicodedata.category(c) != "Mn")
    current = ""
    for char in word:
      if _is_punctuation(char):
        words.extend([current, char] if current else [char])
        current = ""
      else:
        current += char
    if current:
      words.append(current)
  return words


def _is_whitespace(char: str) -> bool:
  return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_control(char: str) -> bool:
  return char not in "\t\n\r" and unicodedata.category(char).startswith("C")


def _is_punctuation(char: str) -> bool:
  code = ord(char)
  if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
    return True
  return unicodedata.category(char).startswith("P")


def _is_cjk(code: int) -> bool:
  return any(low <= code <= high for low, high in (
      (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
      (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))


def load_tokenizer(path: str, lower_case: bool = True) -> Tokenizer:
  """Loads `*.model` as SentencePiece, anything else (`vocab.txt`) as WordPiece (`lower_case` applies)."""
  if path.endswith(".model"):
    return SentencePieceTokenizer.from_file(path)
  return WordPieceTokenizer.from_file(path, lower_case=lower_case)


def dataset_captions(name: str, data_dir: str | None, split: str = "train") -> Iterable[str]:
  """Yields every caption of a TFDS image-text dataset split (images are not decoded)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  import vlp_jax.data.builders  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import  (registers them)
  tf.config.set_visible_devices([], "GPU")
  builder = tfds.builder(name, data_dir=data_dir)
  dataset = builder.as_dataset(split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
  for captions in dataset.map(lambda ex: ex["captions"]).as_numpy_iterator():
    yield from (c.decode("utf-8") for c in captions)


def _main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  train = commands.add_parser("train", help="train a SentencePiece model on a TFDS dataset's captions")
  train.add_argument("--dataset", required=True, help="TFDS name incl. config, e.g. shapes/64px")
  train.add_argument("--data_dir", default=None)
  train.add_argument("--split", default="train")
  train.add_argument("--vocab_size", type=int, required=True)
  train.add_argument("--model_type", default="unigram", choices=["unigram", "bpe", "word", "char"])
  train.add_argument("--lower_case", action="store_true")
  train.add_argument("--multiword_pieces", action="store_true",
                     help="let pieces span words (SentencePiece split_by_whitespace=false)")
  train.add_argument("--output", required=True, help="path of the .model file")
  args = parser.parse_args(argv)
  if args.dataset == "shapes":
    args.dataset = "shapes/64px"
  tokenizer = train_sentencepiece(dataset_captions(args.dataset, args.data_dir, args.split), args.vocab_size,
                                  args.output, model_type=args.model_type, lower_case=args.lower_case,
                                  split_by_whitespace=not args.multiword_pieces)
  print(f"wrote {args.output} (vocab_size={tokenizer.vocab_size})")


if __name__ == "__main__":
  _main()
