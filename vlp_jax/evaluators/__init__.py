"""Model-independent evaluation metrics: captioning, retrieval, detection and VQA.

Every metric is returned as a fraction or in its reference toolkit's unit (BLEU and
recall in [0, 1], CIDEr-D unscaled like coco-caption, AP in [0, 1], VQA accuracy in
[0, 1]); multiply by 100 to compare with paper tables.
"""
