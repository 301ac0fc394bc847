#!/usr/bin/env python3
"""Make benches/peers/scorer.onnx: the small model the Python peer of `cargo xtask bench` runs.

A text scorer as small as a real one can be: 64 hashed byte-bigram features -> a dense layer
(64 x 4) -> softmax over 4 labels. Weights come from a fixed seed, so the file is the same
every time it is made. Needs the `onnx` and `numpy` packages (benches/peers/requirements.txt):

    benches/.peers/venv/bin/python benches/peers/make_model.py
"""

import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES = 64
LABELS = 4


def main() -> None:
    rng = np.random.default_rng(20261123)
    weights = rng.standard_normal((FEATURES, LABELS)).astype(np.float32)
    bias = rng.standard_normal(LABELS).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "weights"], ["logits_raw"]),
            helper.make_node("Add", ["logits_raw", "bias"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["scores"], axis=-1),
        ],
        "scorer",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", LABELS])],
        initializer=[
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    out = pathlib.Path(__file__).with_name("scorer.onnx")
    onnx.save(model, out)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
