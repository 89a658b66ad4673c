"""Model FLOPs utilisation (MFU) of the BLIP pretraining train step on one accelerator.

Run: python benchmarks/blip_pretrain_mfu.py [--variant base] [--dtype bfloat16]
         [--batch 64,128] [--remat none,dots] [--scan_layers 0,1] [--text_length 32]
         [--rounds 5] [--steps 5] [--profile DIR]

The step is the trainer's: `blip.loss_fn_for` (EMA update of the momentum encoders, ITC
against the 57,600-feature queue with momentum distillation, ITM on 2B mined hard negatives,
LM with label smoothing) under `vlp_jax.train.step.compute_gradients`, then AdamW, jitted
with the params, optimiser state and extra state donated. `base`, `large` and `tiny` are the
models of `configs/blip.py`'s variants (ViT-B/16 or ViT-L/16 at 224 px + BERT-base MED, text
dropout 0.1; tiny: the CPU learning test's, run it with `--dtype float32 --batch 32`);
`small` is a 2-layer, 64-wide model at 32 px for a smoke test on a CPU.

Model FLOPs (analytic, matmuls only): 3x the forward of what gets gradients (ViT on B
images, unimodal text encoder on B texts, image-grounded encoder on 3B pairs, decoder and
LM head on B texts, ITC similarities to batch + queue) plus 1x the forward of the momentum
ViT and text encoder. Recomputation under remat is not model FLOPs. XLA's cost analysis of
the compiled step is printed next to it. The peak is measured in the same process: a jitted
8192^3 matmul in `--dtype` (2048^3 on a CPU). Each configuration prints ms per step (median
of `--rounds` windows of `--steps` steps), TFLOP/s and MFU; the last line is the best MFU.
With `--profile DIR`, each configuration then traces `--steps` more steps under DIR (with the
compiled module's text) and prints the op kinds and single ops that take the most time per
step, each op named by its place in the model (`trace_summary.py`).
"""
import argparse
import dataclasses
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import trace_summary
from vlp_jax.models import blip, blip_family
from vlp_jax.train.step import compute_gradients

SMALL = dict(image_size=32, patch_size=8, vision_width=64, vision_layers=2, vision_heads=2,
             vision_mlp_dim=128, vocab_size=512, text_width=64, text_layers=2, text_heads=2,
             text_mlp_dim=128, embed_dim=32, queue_size=256)
# configs/blip.py's variants; `small` is a CPU smoke test.
VARIANTS = ("base", "large", "small", "tiny")


def blip_config(variant: str, text_length: int) -> blip.BlipConfig:
  if variant == "small":
    return blip.BlipConfig(**SMALL, max_text_length=text_length)
  config = blip_family.blip_config_from(blip_family.default_config(variant))
  if variant == "tiny":  # its shapes tokenizer's vocabulary
    config = dataclasses.replace(config, vocab_size=300)
  return dataclasses.replace(config, max_text_length=text_length)


def analytic_flops(c: blip.BlipConfig, batch: int, text_length: int) -> float:
  """Model FLOPs of one pretraining step (matmuls: 2 x multiply-adds)."""
  patches = (c.image_size // c.patch_size) ** 2
  s, dv, mv = patches + 1, c.vision_width, c.vision_mlp_dim
  t, d, m = text_length, c.text_width, c.text_mlp_dim

  def vision(b: int) -> float:
    layer = 2 * b * s * (4 * dv * dv + 2 * dv * mv) + 4 * b * s * s * dv
    return 2 * b * patches * c.patch_size ** 2 * 3 * dv + c.vision_layers * layer

  def text(b: int, cross: bool) -> float:
    layer = 2 * b * t * (4 * d * d + 2 * d * m) + 4 * b * t * t * d
    if cross:  # queries and output from the text, keys and values from the image tokens
      layer += 2 * b * t * 2 * d * d + 2 * b * s * 2 * dv * d + 4 * b * t * s * d
    return c.text_layers * layer

  projections = 2 * batch * (dv + d) * c.embed_dim
  itc = 2 * 2 * batch * (batch + c.queue_size) * c.embed_dim
  lm_head = 2 * batch * t * (d * d + d * c.vocab_size)
  trained = (vision(batch) + text(batch, False) + text(3 * batch, True) + text(batch, True)
             + lm_head + projections + itc)
  momentum = vision(batch) + text(batch, False) + projections
  return 3 * trained + momentum


def matmul_peak(dtype: jnp.dtype, size: int, repeats: int = 10) -> float:
  """FLOP/s of a jitted [size, size] @ [size, size] in `dtype` (median of `repeats`)."""
  keys = jax.random.split(jax.random.PRNGKey(0))
  a, b = (jax.random.normal(k, (size, size), jnp.float32).astype(dtype) for k in keys)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * size ** 3 / float(np.median(times))


def step_runner(c: blip.BlipConfig, dtype: jnp.dtype, remat: str, scan_layers: bool,
                batch: int, text_length: int) -> tuple[Any, Any]:
  """A callable running `n` donated train steps (blocking at the end), and the compiled step."""
  model = blip.build_blip(c, dtype=dtype, remat_policy=remat, scan_layers=scan_layers)
  params = nn.meta.unbox(blip.init_params(model, jax.random.PRNGKey(0)))
  extra = blip.init_extra_state(params, jax.random.PRNGKey(1), c)
  tx = optax.adamw(3e-4, weight_decay=0.05)
  opt_state = tx.init(params)
  loss_fn = blip.loss_fn_for(model)

  def train_step(params: Any, opt_state: Any, extra: Any, data: dict[str, jax.Array],
                 rng: jax.Array) -> tuple[Any, Any, Any, jax.Array]:
    grads, loss, _, extra = compute_gradients(loss_fn, params, extra, data, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, extra, loss

  rng = np.random.default_rng(0)
  data = {
      "image": jnp.asarray(rng.normal(size=(batch, c.image_size, c.image_size, 3)), jnp.float32),
      "text_ids": jnp.asarray(rng.integers(10, c.vocab_size, (batch, text_length)), jnp.int32),
      "text_mask": jnp.ones((batch, text_length), bool)}
  step = jax.jit(train_step, donate_argnums=(0, 1, 2))
  compiled = step.lower(params, opt_state, extra, data, jax.random.PRNGKey(2)).compile()
  state = [params, opt_state, extra]

  def run(n: int) -> None:
    for i in range(n):
      *state[:], loss = compiled(*state, data, jax.random.PRNGKey(i))
    loss.block_until_ready()

  return run, compiled


def xla_flops(compiled: Any) -> float:
  """FLOPs of the compiled step by XLA's cost analysis (NaN where it has none)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", float("nan")))


def profile(run: Any, compiled: Any, steps: int, wall_ms_per_step: float, trace_dir: str) -> str:
  """Traces `steps` steps into `trace_dir` and returns `trace_summary.summarize`'s report,
  also written there (summary.txt) beside the compiled module's text (train_step.hlo.txt)."""
  hlo_text = compiled.as_text()
  os.makedirs(trace_dir, exist_ok=True)
  with open(os.path.join(trace_dir, "train_step.hlo.txt"), "w") as f:
    f.write(hlo_text)
  jax.profiler.start_trace(trace_dir)
  run(steps)
  jax.profiler.stop_trace()
  report = trace_summary.summarize(trace_dir, "jit_train_step", steps, wall_ms_per_step, hlo_text)
  with open(os.path.join(trace_dir, "summary.txt"), "w") as f:
    f.write(report + "\n")
  return report


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variant", choices=VARIANTS, default="base")
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  parser.add_argument("--batch", default="64", help="comma-separated batch sizes")
  parser.add_argument("--remat", default="none", help="comma-separated remat policies")
  parser.add_argument("--scan_layers", default="0", help="comma-separated: 0 unrolled layers, "
                      "1 scanned (stacked params: fewer, larger optimizer and EMA ops)")
  parser.add_argument("--text_length", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
  parser.add_argument("--profile", default="", help="trace --steps more steps of each "
                      "configuration under this folder and print where the time goes")
  args = parser.parse_args()

  device = jax.devices()[0]
  dtype = jnp.dtype(args.dtype)
  peak = matmul_peak(dtype, 2048 if device.platform == "cpu" else 8192)
  print(f"device={device.device_kind} ({device.platform}) dtype={args.dtype} "
        f"matmul_peak={peak / 1e12:.2f} TFLOP/s", flush=True)
  c = blip_config(args.variant, args.text_length)
  best = 0.0
  configurations = [(remat, bool(int(scan)), int(batch)) for remat in args.remat.split(",")
                    for scan in args.scan_layers.split(",") for batch in args.batch.split(",")]
  for remat, scan_layers, batch in configurations:
    start = time.perf_counter()
    run, compiled = step_runner(c, dtype, remat, scan_layers, batch, args.text_length)
    compile_s = time.perf_counter() - start
    run(2)  # warm-up
    times = []
    for _ in range(args.rounds):
      start = time.perf_counter()
      run(args.steps)
      times.append((time.perf_counter() - start) / args.steps)
    seconds = float(np.median(times))
    flops = analytic_flops(c, batch, args.text_length)
    mfu = flops / seconds / peak
    best = max(best, mfu)
    name = f"batch={batch} remat={remat} scan_layers={int(scan_layers)}"
    print(f"{args.variant} {name}: {1e3 * seconds:.1f} ms/step "
          f"(min {1e3 * min(times):.1f}); model {flops / 1e9:.1f} GFLOP/step "
          f"(XLA cost analysis {xla_flops(compiled) / 1e9:.1f}); {flops / seconds / 1e12:.2f} "
          f"TFLOP/s = MFU {100 * mfu:.1f}% of the measured matmul peak; "
          f"compile {compile_s:.0f} s", flush=True)
    if args.profile:
      trace_dir = os.path.join(args.profile, name.replace(" ", "_").replace("=", "-"))
      try:
        print(profile(run, compiled, args.steps, 1e3 * seconds, trace_dir), flush=True)
      except (FileNotFoundError, ValueError) as error:  # the other configurations still run
        print(f"profile of {name}: {error}", flush=True)
  print(f"best_mfu={100 * best:.1f}%")


if __name__ == "__main__":
  main()
