"""Training objectives: contrastive (ITC), matching (ITM), language (MLM, LM), detection (DETR)."""
