"""Speed of a BLIP captioning train step on CPU: ours (JAX/Flax) vs Hugging Face (PyTorch).

Run: .venv/bin/python benchmarks/blip_step.py [--framework both|jax|torch] [--steps 10]

The model is a small BLIP: ViT 6 layers x 384 wide, 6 heads, MLP 1536, 224 px, patch 16;
text decoder 6 x 384 with cross-attention, MLP 1536, vocab 8192, 32 tokens; batch 16;
fp32. One step = image forward + causal-LM decoder + label-smoothed (0.1) LM loss +
backward + AdamW update. Ours is `Blip.encode_image` + `Blip.lm_logits` +
`objectives.language.causal_lm_loss`, jitted with the params and optimiser state donated,
and only the params the captioning step uses are trained (as in HF's
`BlipForConditionalGeneration`, which has no ITM/ITC heads or bidirectional layers).
Torch is `BlipForConditionalGeneration` of the same sizes, `torch.optim.AdamW`,
`torch.set_num_threads(<cores>)`.

With `--framework both` (default) the two are timed in one process, steps interleaved
round by round (the CPU may be shared: only ratios taken side by side mean much). Under
glibc, interleaving slows ours more than torch (each of our steps faults in pages that
torch's step has just used and freed): prefer `--malloc tbb`, below.
Each framework is warmed up, then the median of `--steps` timed steps is reported.

Also printed: model FLOPs per step (analytic: 2 * MACs of every matmul, forward, times 3
for forward + backward; cross-checked against XLA's cost analysis of the compiled step),
the measured fp32 GEMM peak of this machine (a jitted 2048^3 matmul in JAX), achieved
GFLOP/s and model FLOPs utilisation (MFU) against that peak. The last line is
`ms_per_step=X` (ours with `both` or `jax`, torch's with `torch`).

XLA CPU flags: none are set here (no flag tried helped, see README); `XLA_FLAGS` from the
environment applies and is printed.

Host malloc: XLA CPU allocates the step's temporaries as one 1.3 GB buffer per call, which
glibc maps afresh and unmaps every step (339k page faults, ~0.6 s of kernel time per step
here). `--malloc tbb` (the `cpu` extra: `pip install -e .[cpu]`) runs ours with TBB's scalable
allocator preloaded (the script re-executes itself) and told to keep objects over 64 MB cached,
so the step reuses the same pages. PyTorch's step is slower under that allocator (see
README), so `--framework both --malloc tbb` times torch (glibc) and then ours (tbbmalloc),
each in its own child process, and prints the ratio of their medians.
"""
import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

VISION = dict(image_size=224, patch_size=16, width=384, layers=6, heads=6, mlp=1536)
TEXT = dict(width=384, layers=6, heads=6, mlp=1536, vocab=8192, length=32)
BATCH = 16


def analytic_flops() -> dict[str, float]:
  """Model FLOPs of one training step (forward + backward = 3 x forward matmul FLOPs).

  Counts every matmul (projections, MLPs, attention scores and weighted sums, patch
  embedding, LM head + tied vocabulary projection); elementwise work is not counted.
  """
  b = BATCH
  d, m, layers = VISION["width"], VISION["mlp"], VISION["layers"]
  n = (VISION["image_size"] // VISION["patch_size"]) ** 2
  s = n + 1
  patch = 2 * b * n * (VISION["patch_size"] ** 2 * 3) * d
  vit_layer = 2 * b * s * (4 * d * d + 2 * d * m) + 2 * 2 * b * s * s * d
  vision = patch + layers * vit_layer
  t, dt, mt, v = TEXT["length"], TEXT["width"], TEXT["mlp"], TEXT["vocab"]
  self_attention = 2 * b * t * 4 * dt * dt + 2 * 2 * b * t * t * dt
  cross_attention = 2 * b * t * 2 * dt * dt + 2 * b * s * 2 * d * dt + 2 * 2 * b * t * s * dt
  mlp = 2 * b * t * 2 * dt * mt
  text = TEXT["layers"] * (self_attention + cross_attention + mlp)
  head = 2 * b * t * dt * dt + 2 * b * t * dt * v
  forward = vision + text + head
  return {"forward": forward, "step": 3 * forward}


def reexec_with_malloc(malloc: str) -> None:
  """Re-runs this script under tbbmalloc (`tbb`) or without it (`glibc`) unless it already is."""
  from vlp_jax.train import host_allocator

  args = [os.path.abspath(__file__), *sys.argv[1:]]
  if malloc == "glibc" and host_allocator.tbbmalloc_loaded():
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    os.execve(sys.executable, [sys.executable, *args],
              {**env, host_allocator.OPT_OUT_VARIABLE: "glibc"})
  if malloc == "tbb" and not host_allocator.tbbmalloc_loaded():
    if host_allocator.preload_env() is None:
      sys.exit("--malloc tbb: tbbmalloc is not installed (pip install -e .[cpu]) or LD_PRELOAD "
               "is set")
    host_allocator.reexec_under_tbbmalloc(args)


def median(values: list[float]) -> float:
  values = sorted(values)
  mid = len(values) // 2
  return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


# ------------------------------------------------------------------------------------- JAX
def jax_step_runner(seed: int = 0) -> tuple[Callable[[], None], dict[str, Any]]:
  """A callable running one donated, jitted caption train step, and info (XLA FLOPs)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  import flax.linen as nn

  from vlp_jax.models import blip
  from vlp_jax.objectives import language

  config = blip.BlipConfig(
      image_size=VISION["image_size"], patch_size=VISION["patch_size"],
      vision_width=VISION["width"], vision_layers=VISION["layers"],
      vision_heads=VISION["heads"], vision_mlp_dim=VISION["mlp"], vocab_size=TEXT["vocab"],
      text_width=TEXT["width"], text_layers=TEXT["layers"], text_heads=TEXT["heads"],
      text_mlp_dim=TEXT["mlp"], max_text_length=TEXT["length"], label_smoothing=0.1)
  model = blip.build_blip(config)
  params = nn.meta.unbox(blip.init_params(model, jax.random.PRNGKey(seed),
                                          text_length=TEXT["length"]))
  # Train only what the captioning step reads (HF's captioning model has nothing else);
  # `temperature` is read by `setup`, so it rides along as a constant.
  constants = {"temperature": params["temperature"]}
  params = {k: v for k, v in params.items() if k in ("vision", "text", "lm_head")}
  params["text"]["encoder"] = {
      name: {k: v for k, v in layer.items() if k != blip.SELF_ATTENTION}
      for name, layer in params["text"]["encoder"].items()}
  tx = optax.adamw(1e-4, weight_decay=0.05)
  opt_state = tx.init(params)

  def loss_fn(params: Any, images: jax.Array, token_ids: jax.Array,
              mask: jax.Array) -> jax.Array:
    variables = {"params": {**params, **constants}}
    image_embeds = model.apply(variables, images, method=blip.Blip.encode_image)
    dec_ids = blip.with_token(token_ids, config.dec_id)
    logits = model.apply(variables, dec_ids, mask, image_embeds,
                         method=blip.Blip.lm_logits)
    loss, _ = language.causal_lm_loss(logits, dec_ids, mask, config.label_smoothing)
    return loss

  def train_step(params: Any, opt_state: Any, images: jax.Array, token_ids: jax.Array,
                 mask: jax.Array) -> tuple[Any, Any, jax.Array]:
    loss, grads = jax.value_and_grad(loss_fn)(params, images, token_ids, mask)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  size = VISION["image_size"]
  images = jnp.asarray(rng.normal(size=(BATCH, size, size, 3)).astype(np.float32))
  token_ids = jnp.asarray(rng.integers(10, TEXT["vocab"], (BATCH, TEXT["length"])),
                          jnp.int32)
  mask = jnp.ones((BATCH, TEXT["length"]), bool)
  step = jax.jit(train_step, donate_argnums=(0, 1))
  compiled = step.lower(params, opt_state, images, token_ids, mask).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  state = {"params": params, "opt": opt_state}

  def run() -> None:
    state["params"], state["opt"], loss = compiled(state["params"], state["opt"], images,
                                                   token_ids, mask)
    loss.block_until_ready()

  num_params = sum(x.size for x in jax.tree.leaves(params))
  return run, {"xla_flops": float(cost.get("flops", float("nan"))), "params": num_params}


def jax_gemm_peak(size: int = 2048) -> float:
  """GFLOP/s of a jitted fp32 [size, size] @ [size, size] in JAX (median of 10)."""
  import jax.numpy as jnp
  from blip_pretrain_mfu import matmul_peak  # this script's folder is on sys.path

  return matmul_peak(jnp.float32, size) / 1e9


# ----------------------------------------------------------------------------------- torch
def torch_step_runner(threads: int, seed: int = 0) -> tuple[Callable[[], None], dict[str, Any]]:
  """A callable running one HF BlipForConditionalGeneration train step with AdamW."""
  import numpy as np
  import torch
  from transformers import BlipConfig, BlipForConditionalGeneration

  torch.set_num_threads(threads)
  torch.manual_seed(seed)
  config = BlipConfig(
      vision_config=dict(hidden_size=VISION["width"], intermediate_size=VISION["mlp"],
                         num_hidden_layers=VISION["layers"],
                         num_attention_heads=VISION["heads"], image_size=VISION["image_size"],
                         patch_size=VISION["patch_size"]),
      text_config=dict(vocab_size=TEXT["vocab"], hidden_size=TEXT["width"],
                       encoder_hidden_size=VISION["width"], intermediate_size=TEXT["mlp"],
                       num_hidden_layers=TEXT["layers"], num_attention_heads=TEXT["heads"],
                       max_position_embeddings=TEXT["length"], label_smoothing=0.1,
                       bos_token_id=6, pad_token_id=0, sep_token_id=3))
  model = BlipForConditionalGeneration(config).train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
  rng = np.random.default_rng(seed)
  size = VISION["image_size"]
  pixels = torch.from_numpy(rng.normal(size=(BATCH, 3, size, size)).astype(np.float32))
  ids = torch.from_numpy(rng.integers(10, TEXT["vocab"], (BATCH, TEXT["length"])))
  mask = torch.ones_like(ids)

  def run() -> None:
    loss = model(pixel_values=pixels, input_ids=ids, attention_mask=mask, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

  num_params = sum(p.numel() for p in model.parameters())
  return run, {"params": num_params}


# ------------------------------------------------------------------------------------ main
def compare_in_two_processes(args: argparse.Namespace) -> None:
  """torch under glibc, then ours under tbbmalloc, each in a child process; their ratio."""
  ms = {}
  for framework, malloc in (("torch", "glibc"), ("jax", "tbb")):
    command = [sys.executable, os.path.abspath(__file__), "--framework", framework,
               "--malloc", malloc, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--threads", str(args.threads)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    print(output, end="", flush=True)
    ms[framework] = float(output.strip().splitlines()[-1].split("=")[1])
  print(f"ours/torch: ratio of medians {ms['jax'] / ms['torch']:.3f} (separate processes)")
  print(f"ms_per_step={ms['jax']:.2f}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", choices=["caption"], default="caption")
  parser.add_argument("--framework", choices=["both", "jax", "torch"], default="both")
  parser.add_argument("--steps", type=int, default=10, help="timed steps (median)")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                      help="torch intra-op threads (default: all cores)")
  parser.add_argument("--malloc", choices=["glibc", "tbb"], default="glibc",
                      help="tbb: TBB's malloc keeping large buffers (jax only); glibc: without it, "
                           "also when LD_PRELOAD has it (vlp_jax.train.host_allocator)")
  args = parser.parse_args()
  if args.malloc == "tbb" and args.framework == "both":
    return compare_in_two_processes(args)
  if args.malloc == "tbb" and args.framework != "jax":
    parser.error("--malloc tbb is for --framework jax (torch's step is slower under it)")
  reexec_with_malloc(args.malloc)

  print(f"nproc={os.cpu_count()} torch_threads={args.threads} malloc={args.malloc} "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)
  flops = analytic_flops()
  runners: dict[str, Callable[[], None]] = {}
  if args.framework in ("both", "jax"):
    runners["jax"], info = jax_step_runner()
    print(f"jax: trained params {info['params'] / 1e6:.2f}M, XLA cost-analysis flops/step "
          f"{info['xla_flops'] / 1e9:.1f} GFLOP (analytic model FLOPs "
          f"{flops['step'] / 1e9:.1f} GFLOP)", flush=True)
  if args.framework in ("both", "torch"):
    runners["torch"], info = torch_step_runner(args.threads)
    print(f"torch: params {info['params'] / 1e6:.2f}M", flush=True)

  for run in runners.values():
    for _ in range(args.warmup):
      run()
  peaks = [jax_gemm_peak()] if args.framework != "torch" else []
  times: dict[str, list[float]] = {name: [] for name in runners}
  names = list(runners)
  for i in range(args.steps):
    order = names if i % 2 == 0 else names[::-1]  # alternate who goes first
    for name in order:
      start = time.perf_counter()
      runners[name]()
      times[name].append(1e3 * (time.perf_counter() - start))
  if args.framework != "torch":
    peaks.append(jax_gemm_peak())
    peak = max(peaks)
    print(f"gemm_peak_gflops={peak:.1f} (jitted fp32 2048^3 matmul, best of before/after)")
  for name in names:
    ms = median(times[name])
    gflops = flops["step"] / (ms / 1e3) / 1e9
    line = (f"{name}: median {ms:.1f} ms/step (min {min(times[name]):.1f}, "
            f"max {max(times[name]):.1f}) over {args.steps}; model {gflops:.1f} GFLOP/s")
    if args.framework != "torch":
      line += f", MFU {100 * gflops / peak:.1f}% of measured GEMM peak"
    print(line)
  if len(names) == 2:
    ratios = [a / b for a, b in zip(times["jax"], times["torch"])]
    print(f"ours/torch: median per-round ratio {median(ratios):.3f} "
          f"(ratio of medians {median(times['jax']) / median(times['torch']):.3f})")
  print(f"ms_per_step={median(times[names[0]]):.2f}")


if __name__ == "__main__":
  sys.exit(main())
