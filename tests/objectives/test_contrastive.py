"""ITC against a numpy transcription of BLIP's formula; queue, EMA, temperature, alpha ramp."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from subprocess_testing import EIGHT_CPU_DEVICES, run_python
from vlp_jax.objectives import contrastive


def _unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
  x = rng.normal(size=shape)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_softmax(x: np.ndarray) -> np.ndarray:
  x = x - x.max(1, keepdims=True)
  return x - np.log(np.exp(x).sum(1, keepdims=True))


def _blip_itc_reference(v, t, v_m, t_m, queue_v, queue_t, temp, alpha, ids=None, queue_ids=None):
  """BLIP blip_pretrain.py / blip_retrieval.py forward, in float64 numpy (queues row-major)."""
  temp = min(max(temp, 0.001), 0.5)
  image_all = np.concatenate([v_m, queue_v]).T
  text_all = np.concatenate([t_m, queue_t]).T
  bs = v.shape[0]
  if ids is None:
    targets = np.zeros((bs, bs + queue_v.shape[0]))
    np.fill_diagonal(targets, 1)
  else:
    pos = (ids[:, None] == np.concatenate([ids, queue_ids])[None]).astype(float)
    targets = pos / pos.sum(1, keepdims=True)
  i2t_targets = alpha * np.exp(_log_softmax(v_m @ text_all / temp)) + (1 - alpha) * targets
  t2i_targets = alpha * np.exp(_log_softmax(t_m @ image_all / temp)) + (1 - alpha) * targets
  loss_i2t = -(_log_softmax(v @ text_all / temp) * i2t_targets).sum(1).mean()
  loss_t2i = -(_log_softmax(t @ image_all / temp) * t2i_targets).sum(1).mean()
  return (loss_i2t + loss_t2i) / 2


def _case(seed: int, bs: int = 4, kq: int = 8, dim: int = 6):
  rng = np.random.default_rng(seed)
  return [_unit(rng, n, dim) for n in (bs, bs, bs, bs, kq, kq)]


@pytest.mark.parametrize("temp,alpha", [(0.07, 0.4), (0.2, 0.0), (0.0001, 0.4), (0.9, 1.0)])
def test_itc_matches_blip_reference(temp: float, alpha: float):
  v, t, v_m, t_m, queue_v, queue_t = _case(0)
  queue = contrastive.FeatureQueue(jnp.asarray(queue_v, jnp.float32),
                                   jnp.asarray(queue_t, jnp.float32),
                                   jnp.full((8,), -1, jnp.int32), jnp.zeros((), jnp.int32))
  out = contrastive.image_text_contrastive_loss(
      *(jnp.asarray(x, jnp.float32) for x in (v, t, v_m, t_m)), queue,
      jnp.asarray(temp), jnp.asarray(alpha))
  expected = _blip_itc_reference(v, t, v_m, t_m, queue_v, queue_t, temp, alpha)
  np.testing.assert_allclose(out.loss, expected, rtol=2e-5)
  clamped = min(max(temp, 0.001), 0.5)
  np.testing.assert_allclose(out.sim_i2t, v @ np.concatenate([t_m, queue_t]).T / clamped,
                             rtol=2e-5, atol=1e-4)
  assert out.sim_t2i.shape == (4, 12)


def test_itc_with_image_ids_spreads_positives_over_same_image():
  v, t, v_m, t_m, queue_v, queue_t = _case(1)
  ids = np.array([3, 5, 3, 7])
  queue_ids = np.array([5, -1, -1, 3, 9, 9, -1, 7])
  queue = contrastive.FeatureQueue(jnp.asarray(queue_v, jnp.float32),
                                   jnp.asarray(queue_t, jnp.float32),
                                   jnp.asarray(queue_ids, jnp.int32), jnp.zeros((), jnp.int32))
  out = contrastive.image_text_contrastive_loss(
      *(jnp.asarray(x, jnp.float32) for x in (v, t, v_m, t_m)), queue,
      jnp.asarray(0.07), jnp.asarray(0.4), image_ids=jnp.asarray(ids))
  expected = _blip_itc_reference(v, t, v_m, t_m, queue_v, queue_t, 0.07, 0.4, ids, queue_ids)
  np.testing.assert_allclose(out.loss, expected, rtol=2e-5)


def test_itc_gradients_skip_momentum_features_and_reach_temperature():
  v, t, v_m, t_m, queue_v, queue_t = (jnp.asarray(x, jnp.float32) for x in _case(2))
  queue = contrastive.FeatureQueue(queue_v, queue_t, jnp.full((8,), -1, jnp.int32),
                                   jnp.zeros((), jnp.int32))

  def loss(v, t, v_m, t_m, temp):
    return contrastive.image_text_contrastive_loss(v, t, v_m, t_m, queue, temp, 0.4).loss

  grads = jax.grad(loss, argnums=(0, 1, 2, 3, 4))(v, t, v_m, t_m, jnp.asarray(0.07))
  assert np.abs(grads[0]).sum() > 0 and np.abs(grads[1]).sum() > 0
  np.testing.assert_array_equal(grads[2], 0)
  np.testing.assert_array_equal(grads[3], 0)
  assert grads[4] != 0
  # Outside the clamp range the forward uses the bound, the gradient passes straight through.
  low_grad = jax.grad(loss, argnums=4)(v, t, v_m, t_m, jnp.asarray(1e-5))
  np.testing.assert_allclose(low_grad, jax.grad(loss, argnums=4)(v, t, v_m, t_m,
                                                                  jnp.asarray(0.001)), rtol=1e-5)


def test_clamp_temperature_bounds():
  values = contrastive.clamp_temperature(jnp.asarray([-1.0, 1e-4, 0.07, 0.5, 3.0]))
  np.testing.assert_allclose(values, [0.001, 0.001, 0.07, 0.5, 0.5], rtol=1e-6)


def test_ramped_alpha():
  assert float(contrastive.ramped_alpha(0, 0.4, 100)) == 0.0
  np.testing.assert_allclose(contrastive.ramped_alpha(25, 0.4, 100), 0.1, rtol=1e-6)
  np.testing.assert_allclose(contrastive.ramped_alpha(1000, 0.4, 100), 0.4, rtol=1e-6)
  np.testing.assert_allclose(contrastive.ramped_alpha(jnp.asarray(3), 0.4, 0), 0.4, rtol=1e-6)


def test_enqueue_writes_at_pointer_and_wraps():
  queue = contrastive.init_feature_queue(jax.random.key(0), queue_size=6, dim=4)
  np.testing.assert_allclose(np.linalg.norm(queue.image_features, axis=-1), 1, rtol=1e-5)
  update = jax.jit(contrastive.enqueue)
  batches = [(np.full((2, 4), k, np.float32), np.full((2, 4), -k, np.float32),
              np.array([k, k + 100], np.int32)) for k in range(1, 5)]
  pointers = []
  for image, text, ids in batches:
    queue = update(queue, jnp.asarray(image), jnp.asarray(text), jnp.asarray(ids))
    pointers.append(int(queue.pointer))
  assert pointers == [2, 4, 0, 2]
  # The fourth batch overwrote rows 0-1; rows 2-5 hold batches 2 and 3.
  np.testing.assert_array_equal(queue.image_features[:, 0], [4, 4, 2, 2, 3, 3])
  np.testing.assert_array_equal(queue.text_features[:, 0], [-4, -4, -2, -2, -3, -3])
  np.testing.assert_array_equal(queue.image_ids, [4, 104, 2, 102, 3, 103])
  with pytest.raises(ValueError, match="multiple"):
    contrastive.enqueue(queue, jnp.zeros((4, 4)), jnp.zeros((4, 4)))


def test_ema_update_over_pytree():
  momentum_params = {"a": jnp.ones((2,)), "b": {"c": jnp.zeros((3,))}}
  params = {"a": jnp.full((2,), 3.0), "b": {"c": jnp.full((3,), 10.0)}}
  out = contrastive.ema_update(momentum_params, params, momentum=0.995)
  np.testing.assert_allclose(out["a"], 0.995 + 0.005 * 3, rtol=1e-6)
  np.testing.assert_allclose(out["b"]["c"], 0.05, rtol=1e-5)


_SHARDED_SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_threefry_partitionable", True)
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from vlp_jax.objectives import contrastive, matching

def step(v, t, v_m, t_m, queue, rng):
  out = contrastive.image_text_contrastive_loss(v, t, v_m, t_m, queue, jnp.asarray(0.07), 0.4)
  negatives = matching.sample_hard_negatives(rng, out.sim_i2t[:, :16], out.sim_t2i[:, :16])
  return out.loss, negatives, contrastive.enqueue(queue, v_m, t_m)

rng = np.random.default_rng(0)
unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
feats = [jnp.asarray(unit(rng.normal(size=(16, 8))), jnp.float32) for _ in range(4)]
queue = contrastive.init_feature_queue(jax.random.key(0), 32, 8)
single = jax.jit(step)(*feats, queue, jax.random.key(1))
mesh = Mesh(np.array(jax.devices()), ("data",))
rows = NamedSharding(mesh, P("data"))
sharded_feats = [jax.device_put(x, rows) for x in feats]
sharded = jax.jit(step)(*sharded_feats, queue, jax.random.key(1))
assert len(sharded_feats[0].sharding.device_set) == 8
np.testing.assert_allclose(sharded[0], single[0], rtol=1e-5)
for a, b in zip(jax.tree.leaves(sharded[1:]), jax.tree.leaves(single[1:])):
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
print("OK")
"""


def test_batch_sharded_over_eight_devices_matches_one_device():
  """Under jit the sharded batch is the global batch: loss, negatives and queue agree."""
  result = run_python(_SHARDED_SCRIPT, env=EIGHT_CPU_DEVICES)
  assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
