"""Stand-in for a competitor's train_gpt.py: the file whose bytes the challenge counts as code.
golf never runs it; `--code-file tests/data/train_stub.py` counts (and ships) it exactly as is."""

import os

SEQ_LEN = int(os.environ.get("SEQ_LEN", "128"))
STEPS = int(os.environ.get("ITERATIONS", "120"))


def main():
    raise SystemExit("train with tests/foreign_lm.py; golf packs and verifies the result")


if __name__ == "__main__":
    main()
