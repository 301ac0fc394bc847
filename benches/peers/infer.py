#!/usr/bin/env python3
"""The Python peer of `cargo xtask bench`: one process that imports onnxruntime, loads the
small scorer model and scores its argument, the way agents are commonly scripted today.

    python infer.py "some text"   ->   label index and the four scores
"""

import os
import pathlib
import sys

# The PyPI build of ONNX Runtime otherwise writes a device id under ~/.cache and tries to
# send telemetry; nothing local-first should.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402

FEATURES = 64


def features(text: bytes) -> np.ndarray:
    """Hashed byte bigrams, normalized: the same featurizer a Rust agent would use."""
    v = np.zeros((1, FEATURES), dtype=np.float32)
    for a, b in zip(text, text[1:]):
        v[0, (a * 31 + b) % FEATURES] += 1.0
    total = v.sum()
    return v / total if total else v


def main() -> None:
    text = " ".join(sys.argv[1:]).encode()
    model = pathlib.Path(__file__).parents[2] / "models" / "scorer" / "scorer.onnx"
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    (scores,) = session.run(None, {"features": features(text)})
    print(int(scores[0].argmax()), " ".join(f"{s:.4f}" for s in scores[0]))


if __name__ == "__main__":
    main()
