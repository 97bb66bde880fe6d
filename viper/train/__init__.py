"""Training loops of the tokenizer and the prior (checkpoints, resume, metrics); shared helpers: common.py."""
