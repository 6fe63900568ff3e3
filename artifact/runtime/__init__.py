"""The runtime layer: what a submission ships, and the kernel every layer shares.

Nothing here imports from outside this package (only the standard library, numpy, torch,
sentencepiece and the codec libraries), and its modules import each other relatively, so the
layer runs under the name it ships as (`golf_runtime` in a submission). A submission carries the
run entry (`run`) and exactly the modules it imports at module level (`artifact.submission.
runtime_modules`): format + decoder, the model (model, layers, embeddings), scoring and byte
counting, the shard reader, the tokenizer loader, the errors and config validation, and the TTT
module when it scores with TTT. The kernel modules a submission never runs (`files`: atomic
writes and TOML files) and the checkpoint format (`checkpoint`) live here too, so that packing
and training share them. The diagram: artifact/docs/layers.md.
"""
