#!/usr/bin/env python3
"""The Python reference for the broker's generation loop: greedy decoding of a chat prompt
with onnxruntime over the same ONNX file and tokenizer.json, printed as JSON (the prompt's
token ids, the generated ids, the text, tokens/s and time to first token).

    python reference.py <model-dir> <user message> [max_tokens] [threads]

The integration test compares the broker's greedy tokens with these, token for token, and
the benchmark compares their speed.
"""

import json
import pathlib
import sys
import time
import tomllib

import numpy as np
import onnxruntime
from tokenizers import Tokenizer


def main():
    model_dir = pathlib.Path(sys.argv[1])
    message = sys.argv[2]
    max_tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    manifest = tomllib.loads((model_dir / "model.toml").read_text())
    gen = manifest["generate"]
    tokenizer = Tokenizer.from_file(str(model_dir / gen["tokenizer"]))
    prompt = (
        f"<|im_start|>system\n{gen['default_system']}<|im_end|>\n"
        f"<|im_start|>user\n{message}<|im_end|>\n<|im_start|>assistant\n"
    )
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    stops = {tokenizer.token_to_id(t) for t in gen["stop_tokens"]}
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(
        str(model_dir / manifest["file"]), options, providers=["CPUExecutionProvider"])
    past = {}
    for i in range(gen["layers"]):
        for kind in ("key", "value"):
            past[f"past.{i}.{kind}"] = np.zeros((1, gen["kv_heads"], 0, gen["head_dim"]), np.float32)
    names = [o.name for o in session.get_outputs()]
    ids = prompt_ids
    generated = []
    started = time.perf_counter()
    first = None
    while len(generated) < max_tokens:
        feed = {"input_ids": np.array([ids], np.int64), **past}
        out = dict(zip(names, session.run(None, feed)))
        token = int(np.argmax(out["logits"][0]))
        if first is None:
            first = time.perf_counter() - started
        if token in stops:
            break
        generated.append(token)
        past = {n.replace("present.", "past."): v for n, v in out.items() if n.startswith("present.")}
        ids = [token]
    elapsed = time.perf_counter() - started
    decode = elapsed - first
    print(json.dumps({
        "prompt_ids": prompt_ids,
        "ids": generated,
        "text": tokenizer.decode(generated),
        "ttft_ms": first * 1000,
        "decode_tokens_per_s": (len(generated) - 1) / decode if len(generated) > 1 and decode > 0 else None,
    }, ensure_ascii=False))


if __name__ == "__main__":
    main()
