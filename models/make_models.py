#!/usr/bin/env python3
"""Make the small test models under models/, and their expected outputs.

Each model gets models/<name>/<name>.onnx (a few KB), a model.toml for the broker, and
expected.json: inputs and the outputs Python onnxruntime computes for them, which the tests
compare the broker's answers to. Weights come from fixed seeds or fixed lists, so the files
are the same every time. Needs onnx, onnxruntime and numpy (benches/peers/requirements.txt):

    benches/.peers/venv/bin/python models/make_models.py

- scorer: 64 hashed byte-bigram features -> dense 64x4 -> softmax (the benchmark model).
- sentiment: word counts over a fixed vocabulary (vocabulary.txt) -> positive/negative
  probabilities; the `sentiment` example agent uses it.
- counter: int64 [batch, 3] -> the row sums, int64 (the integer path).
"""

import json
import pathlib

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

HERE = pathlib.Path(__file__).parent
OPSET = 17

POSITIVE = """good great excellent love loved lovely nice happy glad wonderful amazing
fantastic best better fast clean clear easy helpful thanks thank works working fixed
perfect awesome enjoy enjoyed like pleasant smooth""".split()
NEGATIVE = """bad terrible awful hate hated horrible poor sad angry slow broken bug bugs
crash crashes crashed fail fails failed failing worse worst wrong error errors ugly
annoying useless confusing""".split()


def save(name: str, graph, inputs: dict, manifest: str) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    out = HERE / name
    out.mkdir(exist_ok=True)
    onnx.save(model, out / f"{name}.onnx")
    (out / "model.toml").write_text(manifest)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        str(out / f"{name}.onnx"), options, providers=["CPUExecutionProvider"]
    )
    outputs = session.run(None, inputs)
    names = [o.name for o in session.get_outputs()]

    def tensor(a: np.ndarray) -> dict:
        return {"dtype": str(a.dtype), "shape": list(a.shape), "data": a.flatten().tolist()}

    expected = {
        "onnxruntime": onnxruntime.__version__,
        "inputs": {k: tensor(v) for k, v in inputs.items()},
        "outputs": {n: tensor(v) for n, v in zip(names, outputs)},
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"wrote {out}/ ({(out / f'{name}.onnx').stat().st_size} bytes of model)")


def dense_softmax(name: str, features: int, labels: int, weights, bias, in_name: str, out_name: str):
    return helper.make_graph(
        [
            helper.make_node("MatMul", [in_name, "weights"], ["logits_raw"]),
            helper.make_node("Add", ["logits_raw", "bias"], ["logits"]),
            helper.make_node("Softmax", ["logits"], [out_name], axis=-1),
        ],
        name,
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", labels])],
        initializer=[
            numpy_helper.from_array(weights.astype(np.float32), "weights"),
            numpy_helper.from_array(bias.astype(np.float32), "bias"),
        ],
    )


def scorer() -> None:
    rng = np.random.default_rng(20261123)
    graph = dense_softmax(
        "scorer", 64, 4, rng.standard_normal((64, 4)), rng.standard_normal(4), "features", "scores"
    )
    inputs = rng.random((3, 64)).astype(np.float32)
    save(
        "scorer",
        graph,
        {"features": inputs},
        """name = "scorer"
file = "scorer.onnx"
providers = ["cuda", "cpu"]

[[inputs]]
name = "features"
dtype = "float32"
shape = [-1, 64]

[[outputs]]
name = "scores"
dtype = "float32"
shape = [-1, 4]
""",
    )


def sentiment() -> None:
    vocabulary = POSITIVE + NEGATIVE
    weights = np.zeros((len(vocabulary), 2), dtype=np.float32)
    for i, _ in enumerate(POSITIVE):
        weights[i] = [-0.6, 0.6]
    for i, _ in enumerate(NEGATIVE):
        weights[len(POSITIVE) + i] = [0.6, -0.6]
    out = HERE / "sentiment"
    out.mkdir(exist_ok=True)
    (out / "vocabulary.txt").write_text("\n".join(vocabulary) + "\n")
    graph = dense_softmax(
        "sentiment", len(vocabulary), 2, weights, np.zeros(2), "counts", "probabilities"
    )
    counts = np.zeros((2, len(vocabulary)), dtype=np.float32)
    counts[0, vocabulary.index("great")] = 2
    counts[1, vocabulary.index("broken")] = 1
    counts[1, vocabulary.index("slow")] = 1
    save(
        "sentiment",
        graph,
        {"counts": counts},
        f"""name = "sentiment"
file = "sentiment.onnx"
providers = ["cpu"]
warmup = true

# Word counts over vocabulary.txt ({len(vocabulary)} words), in its order.
[[inputs]]
name = "counts"
dtype = "float32"
shape = [-1, {len(vocabulary)}]

# [negative, positive]
[[outputs]]
name = "probabilities"
dtype = "float32"
shape = [-1, 2]

[batching]
max_batch = 16
max_delay_us = 200
""",
    )


def counter() -> None:
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["values", "axes"], ["sums"], keepdims=1),
        ],
        "counter",
        [helper.make_tensor_value_info("values", TensorProto.INT64, ["batch", 3])],
        [helper.make_tensor_value_info("sums", TensorProto.INT64, ["batch", 1])],
        initializer=[numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )
    save(
        "counter",
        graph,
        {"values": np.array([[1, 2, 3], [-5, 10, 1 << 40]], dtype=np.int64)},
        """name = "counter"
file = "counter.onnx"
providers = ["cpu"]

[[inputs]]
name = "values"
dtype = "int64"
shape = [-1, 3]

[[outputs]]
name = "sums"
dtype = "int64"
shape = [-1, 1]
""",
    )


if __name__ == "__main__":
    scorer()
    sentiment()
    counter()
