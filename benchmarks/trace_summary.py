"""Where a jitted step's time goes: the XLA ops of a `jax.profiler` trace, summed per step.

Run on its own (a trace already taken, and the compiled module's text for the op names):

    python benchmarks/trace_summary.py TRACE_DIR --module jit_train_step --steps 5 [--hlo F]

`blip_pretrain_mfu.py --profile DIR` calls `summarize` after timing each configuration.
Ops come from the trace's "XLA Ops" line (GPU), the events tagged `hlo_op` (XLA CPU), or else
the accelerator's kernels (see `op_events`). Overlapping ops (two CPU threads, several GPU
streams) all count, so busy time can exceed the wall time; loops (`while`, a scanned layer
stack) do not, their body's ops do. With the compiled module's text, each op is named by the
`op_name` metadata XLA keeps from the JAX program (e.g.
`jit(train_step)/jvp(Blip.encode_text)/text/encoder/layers_0/.../fc2/dot_general`).
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re

_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{[^}]*op_name=\"([^\"]+)\"", re.M)
# Ops whose span holds the spans of the ops they run (a scanned layer stack's loop).
_CONTAINERS = ("while", "conditional", "call")


def op_events(trace_dir: str, module: str) -> list[tuple[str, float]]:
  """(op name, duration in ms) of every op event of the modules whose name contains `module`.

  Op events: the spans of an "XLA Ops" line where the trace has one (GPU: one span per op
  over its kernels), else the spans tagged with `hlo_op` / `hlo_module` (XLA CPU thunks, GPU
  kernels), else every span of the accelerator processes ("/device:..."), by kernel name.
  """
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))
  if not files:
    raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}")
  with gzip.open(files[-1]) as f:
    events = json.load(f)["traceEvents"]

  metadata = [event for event in events if event.get("ph") == "M"]
  op_lines = {(event["pid"], event.get("tid")) for event in metadata
              if event.get("name") == "thread_name"
              and event.get("args", {}).get("name") == "XLA Ops"}
  devices = {event["pid"] for event in metadata if event.get("name") == "process_name"
             and event.get("args", {}).get("name", "").startswith("/device:")}
  spans = [event for event in events if event.get("ph") == "X" and "dur" in event]
  ops = [(event["name"], event["dur"] / 1e3) for event in spans
         if (event["pid"], event.get("tid")) in op_lines
         and module in event.get("args", {}).get("hlo_module", module)]
  if ops:
    return ops
  ops = [(event["args"]["hlo_op"], event["dur"] / 1e3) for event in spans
         if "hlo_op" in event.get("args", {}) and module in event["args"].get("hlo_module", "")]
  if ops:
    return ops
  return [(event["name"], event["dur"] / 1e3) for event in spans if event["pid"] in devices]


def op_names(hlo_text: str) -> dict[str, str]:
  """Instruction name -> the JAX `op_name` XLA recorded for it (fusions: their root's)."""
  return {match.group(1): match.group(2) for match in _INSTRUCTION.finditer(hlo_text)}


def _kind(hlo_op: str) -> str:
  """"loop_add_fusion.12" -> "loop_add_fusion": ops of one kind, numbered apart."""
  return re.sub(r"\.\d+$", "", hlo_op)


def _part(op_name: str) -> str:
  """"jit(train_step)/transpose(jvp(Blip.itm_logits))/text/..." -> "transpose(jvp(Blip.itm_logits))"
  (the backward of the ITM forward); ops outside any such scope (optimizer, EMA) by their op."""
  scopes = op_name.split("/")
  return scopes[1] if len(scopes) > 1 else "(no op_name)"


def summarize(trace_dir: str, module: str, steps: int, wall_ms_per_step: float | None = None,
              hlo_text: str = "", top: int = 20) -> str:
  """A text report: busy time per step, and the op kinds, parts of the step (with `hlo_text`)
  and single ops that take the most."""
  ops = op_events(trace_dir, module)
  if not ops:
    raise ValueError(f"no op events of a module named like {module!r} in {trace_dir}")
  per_op: collections.Counter = collections.Counter()
  for name, ms in ops:
    if _kind(name) not in _CONTAINERS:
      per_op[name] += ms / steps
  per_kind: collections.Counter = collections.Counter()
  counts: collections.Counter = collections.Counter()
  for name, ms in per_op.items():
    per_kind[_kind(name)] += ms
    counts[_kind(name)] += 1
  busy = sum(per_op.values())
  lines = [f"ops of {module}: {busy:.2f} ms busy per step over {len(per_op)} ops"
           + (f" (wall {wall_ms_per_step:.2f} ms)" if wall_ms_per_step else "")]
  lines.append("top op kinds (ms/step, share of busy, ops):")
  for kind, ms in per_kind.most_common(top):
    lines.append(f"  {ms:9.3f} {100 * ms / busy:5.1f}% {counts[kind]:5d}  {kind}")
  names = op_names(hlo_text)
  if names:
    per_part: collections.Counter = collections.Counter()
    for name, ms in per_op.items():
      per_part[_part(names.get(name, ""))] += ms
    lines.append("top parts of the step (ms/step, share of busy, the op_name's first scope):")
    for part, ms in per_part.most_common(top):
      lines.append(f"  {ms:9.3f} {100 * ms / busy:5.1f}%  {part}")
  lines.append("top single ops (ms/step, share of busy, op, JAX op_name):")
  for name, ms in per_op.most_common(top):
    lines.append(f"  {ms:9.3f} {100 * ms / busy:5.1f}%  {name}  {names.get(name, '')}")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("trace_dir")
  parser.add_argument("--module", default="jit_train_step", help="substring of the module name")
  parser.add_argument("--steps", type=int, default=1, help="steps the trace holds")
  parser.add_argument("--hlo", default="", help="the compiled module's text (op names)")
  parser.add_argument("--top", type=int, default=20)
  args = parser.parse_args()
  hlo_text = open(args.hlo).read() if args.hlo else ""
  print(summarize(args.trace_dir, args.module, args.steps, hlo_text=hlo_text, top=args.top))


if __name__ == "__main__":
  main()
