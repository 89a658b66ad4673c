"""The tiny configs, trained with their defaults, learn the `shapes` set (issues [3], [4] item 8).

Each test builds the default `shapes/64px` set (10k/1k/1k) and the BPE-300 SentencePiece
tokenizer its config's docstring names (BLIP's pieces span words, E2E-VLP's do not), trains
through the trainer with the config's own defaults and checks its metrics on the test split.
`reached` fails the test on a regression; `not_yet_reached` holds the issue's thresholds the
default run does not reach reliably yet: the test reports a miss as an expected failure with
the values.
"""
import os

import pytest

from vlp_jax.data.builders.build import build
from vlp_jax.data.tokenizer import dataset_captions, train_sentencepiece
from vlp_jax.train import trainer
from vlp_jax.train.config import load_config_file

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CASES = {
    # Issue [3]: R@1 >= 0.8 both ways, ITM accuracy >= 0.9, caption object recall >= 0.8.
    # Measured with the default (3 vision layers, 32 tokens of pieces that span words, 2,600
    # steps, the sine position start tripled, ITM re-ranking of the top 32), seed 0 as here:
    # R@1 0.852 / 0.855, ITM 0.996, object recall 0.817 (on a 2 GHz AVX2 EPYC, whose XLA
    # kernels round differently: 0.864 / 0.866, 0.998, 0.831); seed 2 0.800 / 0.800, 0.995, 0.818;
    # seeds 1, 3 and 4 miss (R@1 0.58-0.80, ITM 0.99-1.00, recall 0.75-0.79;
    # configs/blip_tiny_experiments.md): `reached` holds floors below every seed's run
    # (another CPU's rounding acts like another seed), the values stay in
    # `not_yet_reached` until every seed reaches them.
    "blip.py:tiny": dict(
        tokenizer=dict(split_by_whitespace=False),
        reached={"itm/accuracy": 0.9, "retrieval/img2txt_r1": 0.5, "retrieval/txt2img_r1": 0.5,
                 "caption/object_recall": 0.65},
        not_yet_reached={"retrieval/img2txt_r1": 0.8, "retrieval/txt2img_r1": 0.8,
                         "caption/object_recall": 0.8}),
    # Issue [4]: detection/ap50 >= 0.7, ITM accuracy >= 0.9, caption object recall >= 0.8.
    # Measured with the default (3,600 steps of 16, caption weight 3, MLM weight 0.5 on every
    # second example, ITM on unmasked texts): ap50 0.936, ITM 0.929, object recall 0.817 (seed 1:
    # 0.917, 0.909, 0.815; seed 0 on a 2 GHz AVX2 EPYC: 0.938, 0.877, 0.821; see
    # configs/e2e_vlp.py): ITM and recall sit near their thresholds, so those stay in
    # `not_yet_reached` above floors.
    "e2e_vlp.py:tiny": dict(
        tokenizer=dict(split_by_whitespace=True),
        reached={"detection/ap50": 0.7, "itm/accuracy": 0.8, "caption/object_recall": 0.75},
        not_yet_reached={"itm/accuracy": 0.9, "caption/object_recall": 0.8}),
}


@pytest.mark.slow
@pytest.mark.parametrize("config_name", sorted(CASES))
def test_tiny_config_learns_shapes(config_name, tmp_path):
  data_dir = str(tmp_path / "data")
  build("shapes/64px", data_dir)
  tokenizer_path = str(tmp_path / "shapes.model")
  case = CASES[config_name]
  train_sentencepiece(dataset_captions("shapes/64px", data_dir), vocab_size=300,
                      model_type="bpe", lower_case=True, output=tokenizer_path,
                      **case["tokenizer"])
  config = load_config_file(os.path.join(REPO_ROOT, "configs", config_name))
  config.data.update(data_dir=data_dir, tokenizer=tokenizer_path, eval_split="test")
  result = trainer.train(config, str(tmp_path / "run"))
  assert result.status == "completed" and result.step == config.total_steps
  metrics = result.eval_metrics
  misses = {name: metrics[name] for name, threshold in case["reached"].items()
            if metrics[name] < threshold}
  assert not misses, (misses, metrics)
  misses = {name: (metrics[name], threshold)
            for name, threshold in case["not_yet_reached"].items() if metrics[name] < threshold}
  if misses:
    pytest.xfail(f"issue thresholds not reached yet (value, threshold): {misses}")
