"""The one sharded trainer (`python -m vlp_jax.train`); see `trainer.train`.

Modules: config (generic fields, validation), sharding (mesh, logical axis rules), optim
(AdamW, schedules, masks), state (TrainState, sharded init), step (jitted train step with
gradient accumulation), checkpoint (orbax, input position, params export), metrics
(metrics.jsonl, TensorBoard, progress), evaluation, distributed (multi-process start-up),
memory (remat policies). Heavy modules are not imported here.
"""
