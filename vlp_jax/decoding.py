"""One autoregressive decoding loop: greedy, beam search and temperature / top-k / top-p sampling.

The model is seen only through a step function with a KV cache:

  step_fn(tokens [B', 1] int32, cache, position) -> (logits [B', V] float32, new_cache)

`position` is the (scalar int32) index of `tokens` in the sequence. A model wraps its flax
`apply(..., decode=True, mutable=['cache'])` in it. Every cache leaf with a leading batch
axis is tiled for beams and reordered when beams are re-ranked; scalar leaves (flax's
`cache_index`) are shared and left alone. Put per-example conditioning (image embeddings,
attention masks) in the cache pytree too, so that it follows the beams.

Sequences are laid out as Hugging Face `generate` returns them for a decoder:
`[bos, prompt..., generated..., pad...]` of length `max_length`; the prompt (e.g. the ids of
"a picture of ") is forced token by token inside the loop, so `step_fn` only ever sees one
token per row. The loop is a `lax.while_loop` that stops early once every row has ended; call
`decode` inside `jax.jit` with the keyword arguments static (see `decode_jit`).

Semantics follow Hugging Face `transformers`:
- processors, before any token choice: `min_length` (eos barred while the sequence, bos and
  prompt included, is shorter) and `repetition_penalty` (scores of tokens already in the
  sequence, bos and prompt included, divided by it when positive, multiplied when negative).
  As in HF they act on logits for greedy / sampling and on log-probabilities in beam search.
- greedy: argmax (ties to the lowest id); after eos a row is padded with `pad_id`.
- sample: logits / temperature, then top-k, then top-p (the smallest set of most probable
  tokens whose probability reaches top_p, at least one), then a categorical draw. HF's
  `generate(do_sample=True)` also applies top_k=50 by default: pass top_k=50 to match it.
- beam: HF's vectorised beam search with `early_stopping=False`: 2 * num_beams candidates per
  step, candidates ending in eos (or reaching max_length) among the first num_beams become
  finished hypotheses scored `sum log p / generated_length ** length_penalty` (generated
  length counts eos, not bos or prompt), the best num_beams running ones go on, and the loop
  stops once no running beam can beat the worst kept hypothesis. HF dispatches num_beams=1
  to greedy; here `method='beam', num_beams=1` runs the beam rules (equal to greedy when
  length_penalty=0). HF fills finished beams with eos instead of pad when pad_id is 0
  (`pad or eos` in its code); we always fill with pad_id.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp

Cache = Any
StepFn = Callable[[jax.Array, Cache, jax.Array], tuple[jax.Array, Cache]]
Method = Literal["greedy", "beam", "sample"]
NEG_INF = -1.0e9


class DecodeOutput(NamedTuple):
  """sequences [B, max_length] int32; scores [B] float32.

  Scores: beam search, the length-penalised log-probability of the best hypothesis (HF's
  `sequences_scores`); greedy and sampling, the summed model log-probabilities (before any
  processor, temperature, top-k or top-p) of the generated tokens, eos included.
  """
  sequences: jax.Array
  scores: jax.Array


def tile_cache_for_beams(cache: Cache, num_beams: int) -> Cache:
  """Repeats every batched leaf [B, ...] -> [B * num_beams, ...] (row b * num_beams + k)."""
  return jax.tree.map(lambda x: x if jnp.ndim(x) == 0 else jnp.repeat(x, num_beams, axis=0), cache)


def gather_cache_rows(cache: Cache, rows: jax.Array) -> Cache:
  """Selects rows [B'] (flat batch-times-beam indices) of every batched leaf."""
  return jax.tree.map(lambda x: x if jnp.ndim(x) == 0 else jnp.take(x, rows, axis=0), cache)


def _gather_beams(x: jax.Array, beam_indices: jax.Array) -> jax.Array:
  """x [B, K, ...], beam_indices [B, K'] -> [B, K', ...]."""
  return jax.vmap(lambda row, idx: jnp.take(row, idx, axis=0))(x, beam_indices)


def process_logits_for_sampling(logits: jax.Array, temperature: float, top_k: int,
                                top_p: float) -> jax.Array:
  """Temperature, top-k and top-p warping of logits [N, V]; removed tokens get -inf."""
  logits = logits / temperature
  if top_k > 0:
    kth_largest = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][:, -1:]
    logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    kept = mass_before < top_p
    kept = kept.at[:, 0].set(True)
    # The smallest logit still inside the nucleus; everything below it goes.
    threshold = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


class _State(NamedTuple):
  """Loop state; K = beams per example (1 for greedy / sampling)."""
  cur_len: jax.Array             # () tokens written so far in every row
  running: jax.Array             # [B, K, L] running sequences
  running_scores: jax.Array      # [B, K] summed log-probs of the running sequences
  finished: jax.Array            # [B, K, L] beam: best finished hypotheses
  finished_scores: jax.Array     # [B, K] beam: their penalised scores
  is_finished: jax.Array         # [B, K] beam: hypothesis slot filled; else: row ended
  improvable: jax.Array          # [B] beam: a running beam may still beat the finished ones
  cache: Cache
  rng: jax.Array


@dataclasses.dataclass(frozen=True)
class _Settings:
  """The static choices of one decode call."""
  method: Method
  beams: int
  max_length: int
  prefix_len: int
  eos_id: int
  pad_id: int
  min_length: int
  repetition_penalty: float
  top_p: float
  top_k: int
  temperature: float
  length_penalty: float


def _apply_processors(settings: _Settings, state: _State, scores: jax.Array) -> jax.Array:
  """HF min-length and repetition-penalty processors on scores [B, K, V]."""
  if settings.min_length > 0:
    too_short = state.cur_len < settings.min_length
    scores = scores.at[:, :, settings.eos_id].set(
        jnp.where(too_short, -jnp.inf, scores[:, :, settings.eos_id]))
  if settings.repetition_penalty != 1.0:
    batch, beams, vocab = scores.shape
    written = jnp.arange(state.running.shape[-1]) < state.cur_len
    tokens = jnp.where(written, state.running, vocab)            # unwritten -> dropped
    rows = jnp.arange(batch)[:, None, None], jnp.arange(beams)[None, :, None]
    seen = jnp.zeros(scores.shape, bool).at[rows[0], rows[1], tokens].set(True, mode="drop")
    penalised = jnp.where(scores < 0, scores * settings.repetition_penalty,
                          scores / settings.repetition_penalty)
    scores = jnp.where(seen, penalised, scores)
  return scores


def _token_step(settings: _Settings, state: _State, logits: jax.Array,
                log_probs: jax.Array) -> _State:
  """Greedy / sampling: one token per row; logits, log_probs [B, 1, V]."""
  rng, sample_rng = jax.random.split(state.rng)
  processed = _apply_processors(settings, state, logits)[:, 0]
  if settings.method == "greedy":
    tokens = jnp.argmax(processed, axis=-1)
  else:
    warped = process_logits_for_sampling(processed, settings.temperature, settings.top_k,
                                         settings.top_p)
    tokens = jax.random.categorical(sample_rng, warped, axis=-1)
  done = state.is_finished[:, 0]
  tokens = jnp.where(done, settings.pad_id, tokens).astype(jnp.int32)
  token_log_prob = jnp.take_along_axis(log_probs[:, 0], tokens[:, None], axis=-1)[:, 0]
  scores = state.running_scores[:, 0] + jnp.where(done, 0.0, token_log_prob)
  return state._replace(
      running=state.running.at[:, 0, state.cur_len].set(tokens),
      running_scores=scores[:, None], is_finished=(done | (tokens == settings.eos_id))[:, None],
      rng=rng)


def _beam_step(settings: _Settings, state: _State, log_probs: jax.Array) -> _State:
  """One HF beam-search step, cache reordered; log_probs [B, K, V]."""
  batch, beams, vocab = log_probs.shape
  log_probs = _apply_processors(settings, state, log_probs)
  total = (log_probs + state.running_scores[:, :, None]).reshape(batch, beams * vocab)
  top_scores, top_indices = jax.lax.top_k(total, 2 * beams)
  source_beam = top_indices // vocab
  top_tokens = (top_indices % vocab).astype(jnp.int32)
  top_sequences = _gather_beams(state.running, source_beam)
  top_sequences = top_sequences.at[:, :, state.cur_len].set(top_tokens)
  ends = (top_tokens == settings.eos_id) | (state.cur_len + 1 >= settings.max_length)

  # Running beams for the next step: the best candidates that did not end.
  next_scores, next_indices = jax.lax.top_k(top_scores + ends * NEG_INF, beams)
  cache_rows = (_gather_beams(source_beam, next_indices)
                + jnp.arange(batch)[:, None] * beams).reshape(-1)

  # Finished hypotheses: ended candidates among the first K, kept if they beat the others.
  just_finished = ends & (jnp.arange(2 * beams) < beams)[None, :]
  generated = (state.cur_len + 1 - settings.prefix_len).astype(jnp.float32)
  length_norm = generated**settings.length_penalty
  penalised = (top_scores / length_norm + (~state.improvable)[:, None] * NEG_INF
               + (~just_finished) * NEG_INF)
  merged_scores = jnp.concatenate([state.finished_scores, penalised], axis=1)
  finished_scores, keep = jax.lax.top_k(merged_scores, beams)
  finished = _gather_beams(jnp.concatenate([state.finished, top_sequences], axis=1), keep)
  is_finished = _gather_beams(jnp.concatenate([state.is_finished, just_finished], axis=1), keep)

  # HF's early-stop heuristic: can the best running beam still beat the worst kept one?
  worst_kept = jnp.where(is_finished, jnp.min(finished_scores, axis=1, keepdims=True), NEG_INF)
  improvable = state.improvable & jnp.any(
      (next_scores[:, :1] / length_norm) > worst_kept, axis=1)
  return state._replace(
      running=_gather_beams(top_sequences, next_indices), running_scores=next_scores,
      finished=finished, finished_scores=finished_scores, is_finished=is_finished,
      improvable=improvable, cache=gather_cache_rows(state.cache, cache_rows))


def _force_prefix(prefix: jax.Array, state: _State) -> _State:
  """Writes prefix [B, P+1] token `cur_len` into every beam; scores and flags unchanged."""
  forced = jnp.take(prefix, jnp.minimum(state.cur_len, prefix.shape[1] - 1), axis=1)
  return state._replace(running=state.running.at[:, :, state.cur_len].set(forced[:, None]))


def _decode_step(step_fn: StepFn, settings: _Settings, prefix: jax.Array,
                 state: _State) -> _State:
  """Feeds the last token of every row to the model and writes the next one."""
  batch, beams = state.running_scores.shape
  position = state.cur_len - 1
  tokens = state.running[:, :, position].reshape(batch * beams, 1)
  logits, cache = step_fn(tokens, state.cache, position)
  logits = logits.astype(jnp.float32).reshape(batch, beams, -1)
  log_probs = jax.nn.log_softmax(logits, axis=-1)

  def free_step(state: _State) -> _State:
    if settings.method == "beam":
      return _beam_step(settings, state, log_probs)
    return _token_step(settings, state, logits, log_probs)

  in_prefix = state.cur_len < settings.prefix_len
  state = jax.lax.cond(in_prefix, functools.partial(_force_prefix, prefix), free_step,
                       state._replace(cache=cache))
  return state._replace(cur_len=state.cur_len + 1)


def _keep_going(settings: _Settings, state: _State) -> jax.Array:
  if settings.method == "beam":
    ended = ~jnp.any(state.improvable)
  else:
    ended = jnp.all(state.is_finished)
  return (state.cur_len < settings.max_length) & ~ended


def decode(step_fn: StepFn, init_cache: Cache, bos_ids: jax.Array, *, max_length: int,
           eos_id: int, pad_id: int, method: Method = "greedy", num_beams: int = 1,
           top_p: float = 1.0, top_k: int = 0, temperature: float = 1.0,
           length_penalty: float = 1.0, min_length: int = 0, repetition_penalty: float = 1.0,
           prompt_ids: jax.Array | None = None, rng: jax.Array | None = None) -> DecodeOutput:
  """Decodes [B] sequences of `max_length` tokens starting with `bos_ids` [B].

  Args:
    step_fn: `(tokens [B', 1], cache, position) -> (logits [B', V], cache)`.
    init_cache: cache for batch B (beam search tiles it to B * num_beams).
    bos_ids: [B] first token of each sequence.
    prompt_ids: optional [B, P] (or [P]) tokens forced after bos before free decoding.
    rng: PRNG key, required for `method='sample'`.
  Returns:
    DecodeOutput(sequences [B, max_length], scores [B]).
  """
  if method not in ("greedy", "beam", "sample"):
    raise ValueError(f"unknown decoding method {method!r}")
  if num_beams > 1 and method != "beam":
    raise ValueError(f"num_beams={num_beams} needs method='beam'")
  if method == "sample" and rng is None:
    raise ValueError("sampling needs an rng key")
  batch = bos_ids.shape[0]
  beams = num_beams if method == "beam" else 1
  prefix = jnp.asarray(bos_ids, jnp.int32)[:, None]
  if prompt_ids is not None:
    prompt = jnp.asarray(prompt_ids, jnp.int32)
    prefix = jnp.concatenate([prefix, jnp.broadcast_to(prompt, (batch, prompt.shape[-1]))], axis=1)
  if prefix.shape[1] >= max_length:
    raise ValueError(f"max_length {max_length} leaves no room after the prefix "
                     f"({prefix.shape[1]} tokens)")
  settings = _Settings(method=method, beams=beams, max_length=max_length,
                       prefix_len=prefix.shape[1], eos_id=eos_id, pad_id=pad_id, top_p=top_p,
                       top_k=top_k, temperature=temperature, length_penalty=length_penalty,
                       min_length=min_length, repetition_penalty=repetition_penalty)

  running = jnp.full((batch, beams, max_length), pad_id, jnp.int32)
  running = running.at[:, :, :prefix.shape[1]].set(prefix[:, None, :])
  # Only the first beam is live at the start, so beams do not pick identical tokens.
  running_scores = jnp.zeros((batch, beams), jnp.float32).at[:, 1:].set(NEG_INF)
  state = _State(
      cur_len=jnp.array(1, jnp.int32), running=running, running_scores=running_scores,
      finished=running, finished_scores=jnp.full((batch, beams), NEG_INF, jnp.float32),
      is_finished=jnp.zeros((batch, beams), bool), improvable=jnp.ones((batch,), bool),
      cache=tile_cache_for_beams(init_cache, beams) if beams > 1 else init_cache,
      rng=rng if rng is not None else jax.random.PRNGKey(0))
  state = jax.lax.while_loop(functools.partial(_keep_going, settings),
                             functools.partial(_decode_step, step_fn, settings, prefix), state)
  if method == "beam":
    return DecodeOutput(state.finished[:, 0], state.finished_scores[:, 0])
  return DecodeOutput(state.running[:, 0], state.running_scores[:, 0])


@functools.partial(jax.jit, static_argnames=(
    "step_fn", "max_length", "eos_id", "pad_id", "method", "num_beams", "top_p", "top_k",
    "temperature", "length_penalty", "min_length", "repetition_penalty"))
def decode_jit(step_fn: StepFn, init_cache: Cache, bos_ids: jax.Array, *, max_length: int,
               eos_id: int, pad_id: int, method: Method = "greedy", num_beams: int = 1,
               top_p: float = 1.0, top_k: int = 0, temperature: float = 1.0,
               length_penalty: float = 1.0, min_length: int = 0,
               repetition_penalty: float = 1.0, prompt_ids: jax.Array | None = None,
               rng: jax.Array | None = None) -> DecodeOutput:
  """`decode` under `jax.jit` (step_fn must be hashable, e.g. a module-level function)."""
  return decode(step_fn, init_cache, bos_ids, max_length=max_length, eos_id=eos_id,
                pad_id=pad_id, method=method, num_beams=num_beams, top_p=top_p, top_k=top_k,
                temperature=temperature, length_penalty=length_penalty,
                min_length=min_length, repetition_penalty=repetition_penalty,
                prompt_ids=prompt_ids, rng=rng)
