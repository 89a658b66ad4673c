"""Model-independent evaluation metrics; the model evaluators feed them.

- `caption_metrics`: `caption_metrics(references, candidates)` -> `caption/bleu1..4`,
  `caption/cider` (corpus BLEU with 'closest' reference length, CIDEr-D as coco-caption).
- `retrieval_metrics`: `retrieval_metrics(img2txt_scores, text_to_image, txt2img_scores)` ->
  `retrieval/{img2txt,txt2img}_r{1,5,10}`, `..._r_mean`, `retrieval/r_mean`;
  `rerank_with_itm` for BLIP's ITC -> ITM + ITC top-k re-ranking.
- `detection_metrics`: `detection_metrics(predictions, ground_truths)` -> `detection/ap`,
  `detection/ap50` (COCOeval bbox, area all, maxDets 100).
- `vqa_metrics`: `vqa_metrics(predictions, human_answers)` -> `vqa/accuracy`;
  `normalize_answer`, `soft_answer_target`, `build_answer_vocabulary`.

Values are fractions or in the reference toolkit's unit (BLEU, recall, AP and VQA accuracy
in [0, 1]; CIDEr-D unscaled like coco-caption): multiply by 100 to compare with paper tables.
"""
