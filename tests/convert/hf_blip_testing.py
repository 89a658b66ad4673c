"""Tiny random-weight Hugging Face BLIP directories, as `save_pretrained` writes them."""
import os

import numpy as np
import torch
from transformers import (BertTokenizer, BlipForConditionalGeneration,  # noqa: F401 (re-exported)
                          BlipForImageTextRetrieval)
from transformers import BlipConfig as HFBlipConfig
from transformers import BlipImageProcessorPil, BlipProcessor

WORDS = ["a", "the", "picture", "of", "red", "blue", "green", "circle", "square", "triangle",
         "on", "left", "right", "big", "small", "and", "is", "there", "##s", "##ish", "one",
         "two", ".", ",", "un", "##der", "above", "photo"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
DEC_ID, ENC_ID = len(VOCAB), len(VOCAB) + 1   # added by the processor
VOCAB_SIZE = len(VOCAB) + 2
IMAGE_SIZE = 32


def make_processor(directory: str) -> BlipProcessor:
  """BertTokenizer from a tiny vocab.txt ([DEC] = bos, [ENC] added) + BlipImageProcessor."""
  os.makedirs(directory, exist_ok=True)
  vocab_path = os.path.join(directory, "vocab.txt")
  with open(vocab_path, "w", encoding="utf-8") as stream:
    stream.write("".join(token + "\n" for token in VOCAB))
  tokenizer = BertTokenizer(vocab_path, do_lower_case=True)
  tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
  assert tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [DEC_ID, ENC_ID]
  image_processor = BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
  return BlipProcessor(image_processor, tokenizer)


def hf_config() -> HFBlipConfig:
  return HFBlipConfig(
      text_config=dict(vocab_size=VOCAB_SIZE, hidden_size=16, encoder_hidden_size=24,
                       num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                       max_position_embeddings=24, bos_token_id=DEC_ID, sep_token_id=3,
                       pad_token_id=0, eos_token_id=3),
      vision_config=dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=40, image_size=IMAGE_SIZE, patch_size=16),
      projection_dim=8, image_text_hidden_size=8)


def make_model(cls: type, seed: int) -> torch.nn.Module:
  """`cls` with every parameter perturbed (LayerNorms too), so each one matters."""
  torch.manual_seed(seed)
  model = cls(hf_config()).eval()
  with torch.no_grad():
    for name, tensor in model.named_parameters():
      scale = 0.1 if "LayerNorm" in name or "layer_norm" in name else 0.3
      tensor.add_(scale * torch.randn_like(tensor))
  return model


def save_hf_blip(directory: str, cls: type, seed: int) -> tuple[torch.nn.Module, BlipProcessor]:
  """Saves a perturbed `cls` and the processor to `directory` (safetensors)."""
  model = make_model(cls, seed)
  model.save_pretrained(directory)
  processor = make_processor(directory)
  processor.save_pretrained(directory)
  return model, processor


def random_images(count: int, seed: int = 0) -> list[np.ndarray]:
  """uint8 images of several sizes (resized by the processor)."""
  rng = np.random.default_rng(seed)
  sizes = [(40, 48), (32, 32), (57, 29), (64, 64)]
  return [rng.integers(0, 256, size=(*sizes[i % len(sizes)], 3), dtype=np.uint8)
          for i in range(count)]

