"""Tests for vlp_jax.data.tokenizer: SentencePiece and WordPiece behind one interface."""
import os

import pytest
import tensorflow as tf

from vlp_jax.data import tokenizer as tokenizer_lib

CAPTIONS = [
    "a red circle to the left of a blue square",
    "two green triangles above a small yellow square",
    "a large purple circle on the right",
    "the blue square is below the red triangle",
    "three small circles and one large square",
    "an orange triangle in the middle of the image",
] * 5

SENTENCES = [
    "A Red Circle, left of the SQUARE.",
    "Café au lait: naïve résumé!",
    "unknown zebras xylophone's (big) $5 #tag",
    "  multiple   spaces\tand\ttabs\n",
    "reddish triangles? yes; redder.",
    "日本 red",
]

VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "a", "red", "circle", "left", "of", "the", "square", "blue", "triangle", "##s", "##dish", "##der",
    "cafe", "au", "lait", "naive", "resume", "big", "yes", "and", "spaces", "multiple", "tab",
    "café", "Red", "A",
    ",", ".", ":", "!", "?", ";", "(", ")", "'", "$", "#", "5", "s", "tag", "日",
]


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory) -> str:
  path = tmp_path_factory.mktemp("wordpiece") / "vocab.txt"
  path.write_text("\n".join(VOCAB) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp("sentencepiece") / "captions.model")
  tokenizer_lib.train_sentencepiece(CAPTIONS, vocab_size=64, output=path)
  return path


def test_sentencepiece_specials_have_documented_ids(sentencepiece_model):
  tok = tokenizer_lib.load_tokenizer(sentencepiece_model)
  assert isinstance(tok, tokenizer_lib.SentencePieceTokenizer)
  ids = [tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.enc_id, tok.dec_id, tok.img_id]
  assert ids == list(range(8))
  assert 8 < tok.vocab_size <= 64


def test_sentencepiece_round_trip_and_in_graph_ids(sentencepiece_model):
  tok = tokenizer_lib.load_tokenizer(sentencepiece_model)
  texts = [CAPTIONS[0], "  a  blue   circle  ", CAPTIONS[3]]
  for text in texts:
    assert tok.decode(tok.encode(text)) == " ".join(text.split())
  ragged = tok.tokenize(tf.constant(texts))
  assert ragged.dtype == tf.int32
  assert ragged.to_list() == [tok.encode(t) for t in texts]
  assert tok.tokenize(tf.constant(texts[0])).numpy().tolist() == tok.encode(texts[0])


def test_sentencepiece_decode_drops_specials(sentencepiece_model):
  tok = tokenizer_lib.load_tokenizer(sentencepiece_model)
  ids = [tok.cls_id, *tok.encode("a red circle"), tok.sep_id, tok.pad_id, tok.pad_id]
  assert tok.decode(ids) == "a red circle"


def test_multiword_pieces_shorten_templated_captions(tmp_path):
  texts = CAPTIONS * 20
  words = tokenizer_lib.train_sentencepiece(texts, vocab_size=80, model_type="bpe")
  phrases = tokenizer_lib.train_sentencepiece(texts, vocab_size=80, model_type="bpe",
                                              split_by_whitespace=False)
  assert any(" " in phrases.decode([i]).strip() for i in range(phrases.vocab_size))  # spans words
  assert (sum(len(phrases.encode(t)) for t in CAPTIONS)
          < sum(len(words.encode(t)) for t in CAPTIONS))
  for text in CAPTIONS:
    assert phrases.decode(phrases.encode(text)) == text
    assert phrases.tokenize(tf.constant(text)).numpy().tolist() == phrases.encode(text)


def test_sentencepiece_training_is_deterministic(tmp_path):
  first = tokenizer_lib.train_sentencepiece(CAPTIONS, vocab_size=64, output=str(tmp_path / "a.model"))
  second = tokenizer_lib.train_sentencepiece(CAPTIONS, vocab_size=64, output=str(tmp_path / "b.model"))
  assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
  assert first.encode(CAPTIONS[1]) == second.encode(CAPTIONS[1])


def test_wordpiece_matches_transformers(vocab_file):
  transformers = pytest.importorskip("transformers")
  for lower_case in (True, False):
    ours = tokenizer_lib.WordPieceTokenizer.from_file(vocab_file, lower_case=lower_case)
    reference = transformers.BertTokenizer(vocab=vocab_file, do_lower_case=lower_case)
    for sentence in SENTENCES:
      expected = reference.encode(sentence, add_special_tokens=False)
      assert ours.encode(sentence) == expected, (lower_case, sentence)
      assert ours.tokenize(tf.constant(sentence)).numpy().tolist() == expected, (lower_case, sentence)
      assert ours.decode(expected) == reference.decode(expected, skip_special_tokens=True)


def test_wordpiece_unknown_words_and_in_graph_batch(vocab_file):
  tok = tokenizer_lib.load_tokenizer(vocab_file)
  assert isinstance(tok, tokenizer_lib.WordPieceTokenizer)
  assert tok.encode("zebra reddish") == [tok.unk_id, VOCAB.index("red"), VOCAB.index("##dish")]
  ragged = tok.tokenize(tf.constant([SENTENCES[:2], SENTENCES[2:4]]))
  assert ragged.shape[:2] == [2, 2] and ragged.dtype == tf.int32
  assert ragged.to_list() == [[tok.encode(s) for s in SENTENCES[:2]], [tok.encode(s) for s in SENTENCES[2:4]]]


def test_wordpiece_round_trip(vocab_file):
  tok = tokenizer_lib.load_tokenizer(vocab_file)
  assert tok.decode(tok.encode("The Red Triangles, left of a Square.")) == "the red triangles, left of a square."
  assert tok.decode(tok.encode("naïve Café")) == "naive cafe"


def test_wordpiece_special_ids_from_vocab_and_appended(vocab_file, tmp_path):
  tok = tokenizer_lib.load_tokenizer(vocab_file)
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
  assert (tok.dec_id, tok.enc_id, tok.img_id) == (len(VOCAB), len(VOCAB) + 1, len(VOCAB) + 2)
  assert tok.vocab_size == len(VOCAB) + 3
  assert tok.decode([tok.dec_id, VOCAB.index("red"), tok.enc_id, tok.img_id, tok.sep_id]) == "red"

  with_enc = tmp_path / "vocab.txt"
  with_enc.write_text("\n".join(VOCAB + ["[ENC]"]) + "\n")
  tok = tokenizer_lib.load_tokenizer(str(with_enc))
  assert tok.enc_id == len(VOCAB)
  assert (tok.dec_id, tok.img_id) == (len(VOCAB) + 1, len(VOCAB) + 2)


def test_wordpiece_requires_core_specials(tmp_path):
  path = tmp_path / "vocab.txt"
  path.write_text("[PAD]\n[UNK]\na\n")
  with pytest.raises(ValueError, match="CLS"):
    tokenizer_lib.load_tokenizer(str(path))


def test_bert_base_layout_gives_blip_ids(tmp_path):
  """A bert-base-uncased-shaped vocab (30,522 lines) + BLIP's appended [DEC]=30522, [ENC]=30523."""
  vocab = [f"[unused{i}]" for i in range(30000)] + [f"word{i}" for i in range(522)]
  vocab[0], vocab[100], vocab[101], vocab[102], vocab[103] = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
  path = tmp_path / "vocab.txt"
  path.write_text("\n".join(vocab) + "\n")
  tok = tokenizer_lib.load_tokenizer(str(path))
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
  assert (tok.dec_id, tok.enc_id, tok.img_id) == (30522, 30523, 30524)


def test_train_command_line_on_shapes(shapes_data_dir, tmp_path, capsys):
  name = next(f"shapes/{d}" for d in os.listdir(os.path.join(shapes_data_dir, "shapes")) if not d.startswith("."))
  output = str(tmp_path / "shapes.model")
  tokenizer_lib._main(["train", "--dataset", name, "--data_dir", shapes_data_dir, "--vocab_size", "150",
                       "--output", output])
  assert "vocab_size=" in capsys.readouterr().out
  tok = tokenizer_lib.load_tokenizer(output)
  caption = next(iter(tokenizer_lib.dataset_captions(name, shapes_data_dir)))
  assert tok.decode(tok.encode(caption)) == caption
  assert tok.unk_id not in tok.encode(caption)
