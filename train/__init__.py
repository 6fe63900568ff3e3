"""Data (shards, tokenizer), the GPT model, the training loop and the val_bpb eval harness."""
