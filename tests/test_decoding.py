"""Decoding loop on a toy second-order Markov chain whose state lives in the cache."""
import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlp_jax import decoding

PAD, BOS, EOS = 0, 1, 2


class ToyChain:
  """logits = table[previous-but-one token, previous token] + bias[position].

  The previous-but-one token is carried in the cache, so a beam search that reorders the
  cache wrongly scores the wrong sequences. `steps` is a scalar leaf (like flax's cache_index).
  """

  def __init__(self, table: np.ndarray, bias: np.ndarray):
    self.table = np.asarray(table, np.float32)   # [V, V, V]
    self.bias = np.asarray(bias, np.float32)     # [L, V]

  @classmethod
  def random(cls, seed: int, vocab: int, max_length: int, scale: float = 2.0) -> "ToyChain":
    rng = np.random.default_rng(seed)
    return cls(scale * rng.normal(size=(vocab, vocab, vocab)),
               scale * rng.normal(size=(max_length, vocab)))

  def step_fn(self, tokens, cache, position):
    previous = tokens[:, 0]
    logits = jnp.asarray(self.table)[cache["previous"], previous] + jnp.asarray(self.bias)[position]
    return logits, {"previous": previous, "steps": cache["steps"] + 1}

  def init_cache(self, batch: int):
    return {"previous": jnp.full((batch,), PAD, jnp.int32), "steps": jnp.zeros((), jnp.int32)}

  def logits(self, history: list[int]) -> np.ndarray:
    """Next-token logits [V] after `history` (bos first)."""
    before = history[-2] if len(history) > 1 else PAD
    return (self.table[before, history[-1]] + self.bias[len(history) - 1]).astype(np.float64)

  def log_probs(self, history: list[int]) -> np.ndarray:
    logits = self.logits(history)
    return logits - np.logaddexp.reduce(logits)

  def greedy_reference(self, prefix: list[int], max_length: int, min_length: int = 0,
                       repetition_penalty: float = 1.0) -> list[int]:
    history = list(prefix)
    while len(history) < max_length:
      scores = hf_processors(history, self.logits(history), min_length, repetition_penalty)
      history.append(int(np.argmax(scores)))
      if history[-1] == EOS:
        break
    return history + [PAD] * (max_length - len(history))

  def best_hypothesis(self, prefix: list[int], max_length: int, length_penalty: float,
                      min_length: int = 0, repetition_penalty: float = 1.0
                      ) -> tuple[list[int], float]:
    """Enumerates every hypothesis; the best by HF's penalised score."""
    vocab = self.table.shape[0]
    best, best_score = None, -np.inf
    for length in range(1, max_length - len(prefix) + 1):
      for tokens in itertools.product(range(vocab), repeat=length):
        ended = tokens[-1] == EOS
        if EOS in tokens[:-1] or (not ended and len(prefix) + length < max_length):
          continue
        history, log_prob = list(prefix), 0.0
        for token in tokens:
          log_prob += hf_processors(history, self.log_probs(history), min_length,
                                    repetition_penalty)[token]
          history.append(token)
        score = log_prob / length**length_penalty
        if score > best_score:
          best, best_score = history + [PAD] * (max_length - len(history)), score
    return best, best_score


def hf_processors(history: list[int], scores: np.ndarray, min_length: int,
                  repetition_penalty: float) -> np.ndarray:
  """HF's MinLength and RepetitionPenalty logits processors, in numpy."""
  scores = scores.copy()
  if len(history) < min_length:
    scores[EOS] = -np.inf
  for token in set(history):
    score = scores[token]
    scores[token] = score * repetition_penalty if score < 0 else score / repetition_penalty
  return scores


@functools.partial(jax.jit, static_argnames=(
    "max_length", "method", "num_beams", "top_p", "top_k", "temperature", "min_length",
    "repetition_penalty"))
def _decode_chain(table, bias, bos, prompt_ids, rng, length_penalty, **static_kwargs):
  """decode over a ToyChain passed as data, so chains of one shape share a compilation."""
  chain = ToyChain.__new__(ToyChain)
  chain.table, chain.bias = table, bias
  return decoding.decode(chain.step_fn, chain.init_cache(bos.shape[0]), bos, eos_id=EOS,
                         pad_id=PAD, prompt_ids=prompt_ids, rng=rng,
                         length_penalty=length_penalty, **static_kwargs)


def run_decode(chain: ToyChain, bos: np.ndarray, prompt_ids=None, rng=None,
               length_penalty: float = 1.0, **static_kwargs):
  return _decode_chain(chain.table, chain.bias, jnp.asarray(bos, jnp.int32), prompt_ids, rng,
                       length_penalty, **static_kwargs)


@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_follows_argmax_path_and_pads_after_eos(seed):
  chain = ToyChain.random(seed, vocab=6, max_length=8)
  out = run_decode(chain, np.full(4, BOS), max_length=8)
  expected = chain.greedy_reference([BOS], 8)
  np.testing.assert_array_equal(np.asarray(out.sequences), [expected] * 4)
  num_generated = expected[1:].index(EOS) + 1 if EOS in expected[1:] else 7
  log_prob = sum(chain.log_probs(expected[:i + 1])[expected[i + 1]] for i in range(num_generated))
  np.testing.assert_allclose(out.scores, log_prob, rtol=1e-5)


def test_greedy_pads_after_eos_per_row():
  # Rows start with different tokens and end at different steps.
  table = np.zeros((4, 4, 4), np.float32)
  table[:, BOS] = [0, 0, 0, 5]   # after bos: token 3
  table[:, 3] = [0, 0, 5, 0]     # after 3: eos
  chain = ToyChain(table, np.zeros((6, 4)))
  out = run_decode(chain, np.array([BOS, 3]), max_length=6)
  np.testing.assert_array_equal(out.sequences, [[BOS, 3, EOS, PAD, PAD, PAD],
                                                [3, EOS, PAD, PAD, PAD, PAD]])


def test_greedy_ties_go_to_lowest_id():
  chain = ToyChain(np.zeros((5, 5, 5)), np.zeros((4, 5)))
  out = run_decode(chain, np.array([BOS]), max_length=4)
  np.testing.assert_array_equal(out.sequences[0], [BOS, 0, 0, 0])


def test_loop_stops_early_once_all_rows_ended():
  table = np.zeros((4, 4, 4), np.float32)
  table[:, :, EOS] = 10.0
  calls = []

  def counting_step(tokens, cache, position):
    jax.debug.callback(lambda p: calls.append(int(p)), position)
    return ToyChain(table, np.zeros((20, 4))).step_fn(tokens, cache, position)

  fn = jax.jit(functools.partial(decoding.decode, counting_step, max_length=20, eos_id=EOS,
                                 pad_id=PAD))
  out = fn({"previous": jnp.zeros((3,), jnp.int32), "steps": jnp.zeros((), jnp.int32)},
           jnp.full((3,), BOS, jnp.int32))
  jax.block_until_ready(out)
  assert calls == [0]
  np.testing.assert_array_equal(out.sequences[:, :3], [[BOS, EOS, PAD]] * 3)


def test_prompt_is_forced_then_greedy_continues():
  chain = ToyChain.random(3, vocab=6, max_length=9)
  prompt = np.array([[4, 5], [5, 3]])
  out = run_decode(chain, np.full(2, BOS), max_length=9, prompt_ids=jnp.asarray(prompt))
  for row in range(2):
    prefix = [BOS] + prompt[row].tolist()
    np.testing.assert_array_equal(out.sequences[row], chain.greedy_reference(prefix, 9))


def planted_chain() -> ToyChain:
  """First-order chain where greedy picks A (p .5) then eos (.34): .17; beam finds B eos: .36."""
  a, b = 3, 4
  probs = np.full((5, 5), 0.2)
  probs[BOS] = [1e-4, 1e-4, 0.1, 0.5, 0.4]
  probs[a] = [1e-4, 1e-4, 0.34, 0.33, 0.33]
  probs[b] = [1e-4, 1e-4, 0.9, 0.05, 0.05]
  table = np.broadcast_to(np.log(probs), (5, 5, 5)).copy()
  return ToyChain(table, np.zeros((6, 5)))


def test_beam_search_beats_greedy_on_planted_example():
  chain = planted_chain()
  greedy = run_decode(chain, np.array([BOS]), max_length=6)
  beam = run_decode(chain, np.array([BOS]), max_length=6, method="beam", num_beams=2,
                    length_penalty=0.0)
  np.testing.assert_array_equal(greedy.sequences[0, :3], [BOS, 3, EOS])
  np.testing.assert_array_equal(beam.sequences[0], [BOS, 4, EOS, PAD, PAD, PAD])
  np.testing.assert_allclose(beam.scores[0], np.log(0.4 / 1.0002 * 0.9 / 1.0002), rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_beam_of_one_without_length_penalty_equals_greedy(seed):
  chain = ToyChain.random(seed, vocab=6, max_length=8, scale=1.0)
  bos = np.array([BOS, 3, 4])
  greedy = run_decode(chain, bos, max_length=8)
  beam = run_decode(chain, bos, max_length=8, method="beam", num_beams=1, length_penalty=0.0)
  np.testing.assert_array_equal(beam.sequences, greedy.sequences)
  np.testing.assert_allclose(beam.scores, greedy.scores, rtol=1e-5)


@pytest.mark.parametrize("seed,length_penalty,prompt", [
    (0, 1.0, None), (1, 0.0, None), (3, 1.0, [3]), (4, -0.5, None)])
def test_wide_beam_finds_enumerated_optimum(seed, length_penalty, prompt):
  # 4 tokens, 4 generated positions (3 with a prompt): 128 beams keep every hypothesis.
  chain = ToyChain.random(seed, vocab=4, max_length=5, scale=1.5)
  kwargs = {} if prompt is None else {"prompt_ids": jnp.asarray([prompt, prompt])}
  out = run_decode(chain, np.array([BOS, BOS]), max_length=5, method="beam", num_beams=128,
                   length_penalty=length_penalty, **kwargs)
  best, best_score = chain.best_hypothesis([BOS] + (prompt or []), 5, length_penalty)
  np.testing.assert_array_equal(out.sequences, [best, best])
  np.testing.assert_allclose(out.scores, best_score, rtol=1e-5)


@pytest.mark.parametrize("min_length,repetition_penalty", [(4, 1.0), (0, 1.8), (3, 1.4)])
def test_min_length_and_repetition_penalty(min_length, repetition_penalty):
  table_chain = ToyChain.random(11, vocab=4, max_length=5, scale=1.5)
  # With min_length, eos would otherwise come early; without, long outputs repeat tokens.
  table_chain.bias[:, EOS] += 2.0 if min_length else -2.0
  kwargs = dict(max_length=5, min_length=min_length, repetition_penalty=repetition_penalty)
  bos = np.array([BOS, 3])
  greedy = run_decode(table_chain, bos, **kwargs)
  beam = run_decode(table_chain, bos, method="beam", num_beams=128, **kwargs)
  for row in range(2):
    prefix = [int(bos[row])]
    np.testing.assert_array_equal(greedy.sequences[row],
                                  table_chain.greedy_reference(prefix, 5, min_length,
                                                               repetition_penalty))
    best, best_score = table_chain.best_hypothesis(prefix, 5, 1.0, min_length, repetition_penalty)
    np.testing.assert_array_equal(beam.sequences[row], best)
    np.testing.assert_allclose(beam.scores[row], best_score, rtol=1e-5)
  plain_greedy = run_decode(table_chain, bos, max_length=5)
  plain_beam = run_decode(table_chain, bos, max_length=5, method="beam", num_beams=128)
  # The processors matter here: they change at least one of the two outputs.
  assert ((np.asarray(plain_greedy.sequences) != np.asarray(greedy.sequences)).any()
          or (np.asarray(plain_beam.sequences) != np.asarray(beam.sequences)).any())


def test_beam_search_batches_independently():
  chains = ToyChain.random(7, vocab=5, max_length=7)
  bos = np.array([BOS, 3, 4])
  together = run_decode(chains, bos, max_length=7, method="beam", num_beams=3)
  for row in range(3):
    alone = run_decode(chains, bos[row:row + 1], max_length=7, method="beam", num_beams=3)
    np.testing.assert_array_equal(together.sequences[row], alone.sequences[0])


def first_step_chain(probs: list[float]) -> ToyChain:
  """The first generated token has distribution `probs`; it is the last one (max_length 2)."""
  bias = np.zeros((2, len(probs)), np.float32)
  bias[0] = np.log(np.asarray(probs))
  return ToyChain(np.zeros((len(probs),) * 3), bias)


@pytest.mark.parametrize("kwargs,expected", [
    ({"top_p": 0.7}, {3: 0.5 / 0.8, 4: 0.3 / 0.8}),
    ({"top_k": 3}, {3: 0.5 / 0.95, 4: 0.3 / 0.95, 2: 0.15 / 0.95}),
    ({"temperature": 2.0}, None),
])
def test_sampling_frequencies(kwargs, expected):
  probs = [0.04, 0.01, 0.15, 0.5, 0.3]
  if expected is None:
    tempered = np.sqrt(probs) / np.sum(np.sqrt(probs))
    expected = dict(enumerate(tempered))
  samples = 4000
  out = run_decode(first_step_chain(probs), np.full(samples, BOS), max_length=2,
                   method="sample", rng=jax.random.PRNGKey(0), **kwargs)
  tokens = np.asarray(out.sequences[:, 1])
  assert set(np.unique(tokens)) <= set(expected)
  for token, p in expected.items():
    assert abs(np.mean(tokens == token) - p) < 0.03, (token, p)


def test_sampling_at_vanishing_temperature_is_greedy():
  chain = ToyChain.random(5, vocab=6, max_length=8)
  bos = np.array([BOS, 3, 4, 5])
  greedy = run_decode(chain, bos, max_length=8)
  sampled = run_decode(chain, bos, max_length=8, method="sample", temperature=1e-4,
                       rng=jax.random.PRNGKey(3))
  np.testing.assert_array_equal(sampled.sequences, greedy.sequences)
  np.testing.assert_allclose(sampled.scores, greedy.scores, rtol=1e-5)


def test_process_logits_keeps_at_least_one_token():
  logits = jnp.log(jnp.asarray([[0.9, 0.05, 0.05]]))
  warped = decoding.process_logits_for_sampling(logits, 1.0, 0, 0.1)
  assert np.isfinite(np.asarray(warped)).tolist() == [[True, False, False]]


def test_cache_helpers_tile_and_gather_rows():
  cache = {"key": jnp.arange(6).reshape(2, 3), "index": jnp.array(4)}
  tiled = decoding.tile_cache_for_beams(cache, 2)
  np.testing.assert_array_equal(tiled["key"], [[0, 1, 2], [0, 1, 2], [3, 4, 5], [3, 4, 5]])
  assert tiled["index"] == 4
  gathered = decoding.gather_cache_rows(tiled, jnp.array([2, 2, 1, 0]))
  np.testing.assert_array_equal(gathered["key"][:, 0], [3, 3, 0, 0])


def test_invalid_arguments_are_rejected():
  chain = ToyChain.random(0, vocab=4, max_length=4)
  bos = jnp.array([BOS])
  with pytest.raises(ValueError):
    decoding.decode(chain.step_fn, chain.init_cache(1), bos, max_length=4, eos_id=EOS,
                    pad_id=PAD, method="sample")   # no rng
  with pytest.raises(ValueError):
    decoding.decode(chain.step_fn, chain.init_cache(1), bos, max_length=4, eos_id=EOS,
                    pad_id=PAD, num_beams=3)   # beams without method='beam'
  with pytest.raises(ValueError):
    decoding.decode(chain.step_fn, chain.init_cache(1), bos, max_length=3, eos_id=EOS,
                    pad_id=PAD, prompt_ids=jnp.array([[3, 3]]))   # no room left


def test_decode_jit_entry_point():
  chain = ToyChain.random(6, vocab=6, max_length=8)
  out = decoding.decode_jit(chain.step_fn, chain.init_cache(2), jnp.array([BOS, BOS]),
                            max_length=8, eos_id=EOS, pad_id=PAD, method="beam", num_beams=2)
  assert out.sequences.shape == (2, 8) and out.scores.shape == (2,)
  np.testing.assert_array_equal(out.sequences[:, 0], [BOS, BOS])


def _after_first_eos_as_pad(sequences: np.ndarray, prefix_len: int) -> np.ndarray:
  """HF fills finished beams with eos when pad_id is 0 (`pad or eos`); map that fill to pad."""
  out = sequences.copy()
  for row in out:
    ends = np.flatnonzero(row[prefix_len:] == EOS)
    if len(ends):
      row[prefix_len + ends[0] + 1:] = PAD
  return out


def test_parity_with_transformers_generate_on_tiny_gpt2():
  """Greedy and num_beams=3 with a prompt, with and without min_length / repetition_penalty,
  against HF generate; torch runs in a pure_callback over the token history kept in the
  cache, so the cache reordering is exercised too."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  vocab, max_length = 12, 10
  torch.manual_seed(2)   # a seed where beams end with eos and beat greedy with longer output
  config = transformers.GPT2Config(vocab_size=vocab, n_positions=16, n_embd=16, n_layer=2,
                                   n_head=2, bos_token_id=BOS, eos_token_id=EOS,
                                   pad_token_id=PAD, initializer_range=0.5)
  model = transformers.GPT2LMHeadModel(config).eval()

  def torch_logits(history, position):
    with torch.no_grad():
      ids = torch.from_numpy(np.asarray(history)[:, :int(position) + 1].astype(np.int64))
      return model(ids).logits[:, -1].float().numpy()

  def step_fn(tokens, cache, position):
    history = cache["history"].at[:, position].set(tokens[:, 0])
    logits = jax.pure_callback(
        torch_logits, jax.ShapeDtypeStruct((tokens.shape[0], vocab), jnp.float32), history,
        position)
    return logits, {"history": history}

  prompt = np.array([[5, 7], [9, 3], [4, 4]])
  input_ids = torch.tensor(np.concatenate([np.full((3, 1), BOS), prompt], axis=1))
  processors = {"min_length": 6, "repetition_penalty": 1.3}
  for method, num_beams, extra in (("greedy", 1, {}), ("beam", 3, {}), ("beam", 3, processors)):
    with torch.no_grad():
      reference = model.generate(
          input_ids, attention_mask=torch.ones_like(input_ids), max_length=max_length,
          num_beams=num_beams, do_sample=False, eos_token_id=EOS, pad_token_id=PAD,
          length_penalty=1.0, early_stopping=False, return_dict_in_generate=True,
          output_scores=True, **extra)
    out = jax.jit(functools.partial(
        decoding.decode, step_fn, max_length=max_length, eos_id=EOS, pad_id=PAD, method=method,
        num_beams=num_beams, prompt_ids=jnp.asarray(prompt), **extra))(
            {"history": jnp.zeros((3, max_length), jnp.int32)}, jnp.full((3,), BOS, jnp.int32))
    expected = _after_first_eos_as_pad(reference.sequences.numpy(), prefix_len=3)
    sequences = np.asarray(out.sequences)
    np.testing.assert_array_equal(sequences[:, :expected.shape[1]], expected)
    assert (sequences[:, expected.shape[1]:] == PAD).all()
    if method == "beam":
      np.testing.assert_allclose(out.scores, reference.sequences_scores.numpy(), rtol=1e-5)


class TinyCausalLM(nn.Module):
  """Embeddings + one flax attention layer (whose decode cache has a scalar cache_index)."""
  vocab: int
  max_length: int
  dim: int = 32

  @nn.compact
  def __call__(self, tokens, positions, decode=False):
    x = nn.Embed(self.vocab, self.dim)(tokens) + nn.Embed(self.max_length, self.dim)(positions)
    mask = None if decode else nn.make_causal_mask(tokens)
    x = x + nn.MultiHeadDotProductAttention(num_heads=2, decode=decode)(x, x, mask=mask)
    return nn.Dense(self.vocab)(nn.LayerNorm()(x)) * 3.0


def test_flax_kv_cache_matches_recomputing_the_prefix():
  """Beam search over flax's attention cache equals re-running the whole prefix."""
  vocab, max_length, batch, eos = 11, 9, 3, 10
  model = TinyCausalLM(vocab, max_length)
  positions = jnp.broadcast_to(jnp.arange(max_length), (batch, max_length))
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((batch, max_length), jnp.int32),
                         positions, decode=True)
  params = variables["params"]

  def cached_step(tokens, cache, position):
    logits, updated = model.apply({"params": params, "cache": cache}, tokens,
                                  jnp.full(tokens.shape, position), decode=True, mutable=["cache"])
    return logits[:, 0], updated["cache"]

  def recomputing_step(tokens, history, position):
    history = history.at[:, position].set(tokens[:, 0])
    logits = model.apply({"params": params}, history, positions[:1].repeat(len(history), 0))
    return jnp.take(logits, position, axis=1), history

  bos = jnp.full((batch,), BOS, jnp.int32)
  kwargs = dict(max_length=max_length, eos_id=eos, pad_id=PAD, method="beam", num_beams=3,
                prompt_ids=jnp.array([[4, 5], [6, 7], [8, 3]]))
  cached = jax.jit(functools.partial(decoding.decode, cached_step, **kwargs))(
      variables["cache"], bos)
  recomputed = jax.jit(functools.partial(decoding.decode, recomputing_step, **kwargs))(
      jnp.zeros((batch, max_length), jnp.int32), bos)
  np.testing.assert_array_equal(cached.sequences, recomputed.sequences)
  np.testing.assert_allclose(cached.scores, recomputed.scores, rtol=1e-5)
  # The first free step draws all 3 beams from beam 0 (the others start at -1e9), so the
  # cache gather is never the identity here.
