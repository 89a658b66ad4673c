"""Numerical parity of our blocks with Hugging Face PyTorch layers on the same weights.

The weight-copy helpers here are test-local; `vlp_jax.convert` will own the real converters.
"""
import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
blip = pytest.importorskip("transformers.models.blip.modeling_blip")
blip_text = pytest.importorskip("transformers.models.blip.modeling_blip_text")
from transformers import BertConfig, BlipTextConfig, BlipVisionConfig  # noqa: E402
from transformers.models.bert.modeling_bert import BertLayer  # noqa: E402

from vlp_jax.layers import TransformerBlock  # noqa: E402

B, T, S, D, DM, H, MLP_DIM = 2, 7, 5, 32, 24, 4, 64


def _numpy(tensor) -> np.ndarray:
  return tensor.detach().cpu().numpy()


def _heads_projection(weight, bias, num_heads: int) -> dict:
  """torch Linear [H*Dh, Din] -> DenseGeneral kernel [Din, H, Dh], bias [H, Dh]."""
  kernel = _numpy(weight).T
  return {"kernel": kernel.reshape(kernel.shape[0], num_heads, -1),
          "bias": _numpy(bias).reshape(num_heads, -1)}


def _output_projection(linear, num_heads: int) -> dict:
  """torch Linear [Dout, H*Dh] -> DenseGeneral kernel [H, Dh, Dout], bias [Dout]."""
  kernel = _numpy(linear.weight).T
  return {"kernel": kernel.reshape(num_heads, -1, kernel.shape[1]),
          "bias": _numpy(linear.bias)}


def _dense(linear) -> dict:
  return {"kernel": _numpy(linear.weight).T, "bias": _numpy(linear.bias)}


def _layer_norm(norm) -> dict:
  return {"scale": _numpy(norm.weight), "bias": _numpy(norm.bias)}


def _bert_attention(attention, num_heads: int) -> dict:
  """HF BERT-style `attention` (self.query/key/value, output.dense/LayerNorm) -> sublayer."""
  heads = functools.partial(_heads_projection, num_heads=num_heads)
  return {
      "attention": {
          "query": heads(attention.self.query.weight, attention.self.query.bias),
          "key": heads(attention.self.key.weight, attention.self.key.bias),
          "value": heads(attention.self.value.weight, attention.self.value.bias),
          "out": _output_projection(attention.output.dense, num_heads),
      },
      "layer_norm": _layer_norm(attention.output.LayerNorm),
  }


def bert_layer_params(layer, num_heads: int) -> dict:
  """HF `BertLayer` / `BlipTextLayer` (post-LN, cross-attention) -> TransformerBlock params."""
  return {
      "self_attention": _bert_attention(layer.attention, num_heads),
      "cross_attention": _bert_attention(layer.crossattention, num_heads),
      "feed_forward": {
          "mlp": {"fc1": _dense(layer.intermediate.dense), "fc2": _dense(layer.output.dense)},
          "layer_norm": _layer_norm(layer.output.LayerNorm),
      },
  }


def blip_vision_layer_params(layer, num_heads: int) -> dict:
  """`BlipEncoderLayer` (pre-LN, fused qkv) -> TransformerBlock params."""
  qkv_weight = layer.self_attn.qkv.weight.chunk(3, dim=0)
  qkv_bias = layer.self_attn.qkv.bias.chunk(3, dim=0)
  heads = functools.partial(_heads_projection, num_heads=num_heads)
  return {
      "self_attention": {
          "attention": {
              "query": heads(qkv_weight[0], qkv_bias[0]),
              "key": heads(qkv_weight[1], qkv_bias[1]),
              "value": heads(qkv_weight[2], qkv_bias[2]),
              "out": _output_projection(layer.self_attn.projection, num_heads),
          },
          "layer_norm": _layer_norm(layer.layer_norm1),
      },
      "feed_forward": {
          "mlp": {"fc1": _dense(layer.mlp.fc1), "fc2": _dense(layer.mlp.fc2)},
          "layer_norm": _layer_norm(layer.layer_norm2),
      },
  }


def _additive_mask(mask: np.ndarray) -> "torch.Tensor":
  """bool mask (True = attend) -> HF additive mask (0 or the float32 minimum)."""
  return torch.from_numpy(np.where(mask, 0.0, np.finfo(np.float32).min).astype(np.float32))


def _randomize(module) -> None:
  """Non-trivial weights everywhere (HF initialises LayerNorm to 1/0 and biases to 0)."""
  generator = torch.Generator().manual_seed(0)
  norm_scales = {id(m.weight) for m in module.modules() if isinstance(m, torch.nn.LayerNorm)}
  with torch.no_grad():
    for param in module.parameters():
      noise = 0.2 * torch.randn(param.shape, generator=generator)
      param.copy_(noise + (1.0 if id(param) in norm_scales else 0.0))


def _assert_same_tree_structure(ours: dict, converted: dict) -> None:
  shapes = lambda tree: jax.tree_util.tree_map(np.shape, tree)
  assert shapes(nn.unbox(ours)) == shapes(converted)


def _inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  x = np.random.default_rng(0).normal(size=(B, T, D)).astype(np.float32)
  padding_mask = np.arange(T)[None, :] < np.array([[T], [T - 3]])
  memory_padding_mask = np.arange(S)[None, :] < np.array([[S - 1], [S]])
  return x, padding_mask, memory_padding_mask


def _check_post_ln_layer(torch_layer, memory_width: int, *, causal: bool,
                         mask_memory: bool) -> None:
  """Runs a HF BERT-style layer (self + cross attention) and our block on the same weights."""
  _randomize(torch_layer)
  x, padding_mask, memory_padding_mask = _inputs()
  memory = np.random.default_rng(2).normal(size=(B, S, memory_width)).astype(np.float32)
  self_mask = padding_mask[:, None, None, :]
  if causal:
    self_mask = self_mask & np.tril(np.ones((T, T), bool))[None, None]
  if not mask_memory:
    memory_padding_mask = np.ones_like(memory_padding_mask)
  with torch.no_grad():
    expected = torch_layer(
        torch.from_numpy(x), encoder_hidden_states=torch.from_numpy(memory),
        attention_mask=_additive_mask(self_mask),
        encoder_attention_mask=_additive_mask(memory_padding_mask[:, None, None, :]))
  expected = _numpy(expected[0] if isinstance(expected, tuple) else expected)

  block = TransformerBlock(num_heads=H, mlp_dim=MLP_DIM, norm_position="post",
                           cross_attention=True, layer_norm_epsilon=1e-12)
  params = bert_layer_params(torch_layer, H)
  _assert_same_tree_structure(
      jax.eval_shape(block.init, jax.random.key(0), x, memory)["params"], params)
  out = jax.jit(functools.partial(block.apply, causal=causal))(
      {"params": params}, x, memory, padding_mask=padding_mask,
      memory_padding_mask=memory_padding_mask)
  np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_post_ln_layer_with_cross_attention_matches_bert_layer(causal: bool):
  config = BertConfig(
      hidden_size=D, num_attention_heads=H, intermediate_size=MLP_DIM, is_decoder=True,
      add_cross_attention=True, layer_norm_eps=1e-12, hidden_act="gelu",
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  config._attn_implementation = "eager"
  _check_post_ln_layer(BertLayer(config, layer_idx=0).eval(), D, causal=causal,
                       mask_memory=True)


@pytest.mark.parametrize("causal", [False, True])
def test_post_ln_layer_with_wider_memory_matches_blip_text_layer(causal: bool):
  """BLIP: the ViT memory is wider than the text. HF's BlipTextLayer (transformers 5.x)
  ignores `encoder_attention_mask`, so the memory here is unpadded (as BLIP's images are)."""
  config = BlipTextConfig(
      hidden_size=D, num_attention_heads=H, intermediate_size=MLP_DIM, encoder_hidden_size=DM,
      is_decoder=True, layer_norm_eps=1e-12, hidden_act="gelu", hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0)
  _check_post_ln_layer(blip_text.BlipTextLayer(config, layer_num=0).eval(), DM,
                       causal=causal, mask_memory=False)


def test_pre_ln_vision_layer_matches_blip_encoder_layer():
  config = BlipVisionConfig(hidden_size=D, num_attention_heads=H, intermediate_size=MLP_DIM,
                            layer_norm_eps=1e-5, hidden_act="gelu", attention_dropout=0.0)
  torch_layer = blip.BlipEncoderLayer(config).eval()
  _randomize(torch_layer)
  x = np.random.default_rng(1).normal(size=(B, T, D)).astype(np.float32)
  with torch.no_grad():
    expected = torch_layer(torch.from_numpy(x))
  expected = _numpy(expected[0] if isinstance(expected, tuple) else expected)

  block = TransformerBlock(num_heads=H, mlp_dim=MLP_DIM, norm_position="pre",
                           layer_norm_epsilon=1e-5)
  params = blip_vision_layer_params(torch_layer, H)
  _assert_same_tree_structure(jax.eval_shape(block.init, jax.random.key(0), x)["params"],
                              params)
  out = jax.jit(block.apply)({"params": params}, x)
  np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
