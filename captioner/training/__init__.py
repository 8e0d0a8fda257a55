"""`captioner train`, `finetune` and `finetune-encoder`, and what they share."""
