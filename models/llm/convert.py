#!/usr/bin/env python3
"""Turn a llama-architecture GGUF file into the broker's generative model: an ONNX graph of
standard operators plus ONNX Runtime's `MatMulNBits` (4-bit weights), a `tokenizer.json`
for the `tokenizers` library, and the `model.toml` the broker reads.

    python convert.py <model.gguf> <out-dir> <name>

Needs numpy, onnx, gguf and tokenizers (no torch, no model hub): setup installs them into
a private environment (`cargo xtask setup`). What it does, so that a reader can check it:

- The weights keep the values the GGUF file holds; nothing is quantized twice. A Q4_1
  block (32 weights along the input dimension: d*q + m, q in 0..15) becomes a
  `MatMulNBits` block (scale d, 4-bit q, integer zero point z = round(-m/d)) plus the
  remainder r = m + d*z times the block's input sum, a float MatMul 32 times smaller
  (`linear_exact`). Requantizing instead (rounding m to a multiple of d) was measured
  against a float32 conversion of the same file: mean KL divergence of the next-token
  distribution 0.25-0.70 and top-1 agreement 54-88%, against 0.002-0.004 and 90-100%
  this way; it costs about a third of the decoding speed (per-operator overhead).
  Layers that read the same input (q, k, v; gate, up) are one MatMulNBits each.
- The token embedding (Q8_0: int8 values with a scale per 32) is kept exactly, as int8 plus
  scales, and gathered and scaled in the graph. The output head is tied to it (there is no
  `output.weight`): an 8-bit MatMulNBits of the same values (q + 128, zero point 128).
- `CONVERT_FLOAT=1` writes every weight as float32 instead (~570 MB): the yardstick the
  figures above were measured against.
- llama.cpp stores the query and key projections permuted for its interleaved rotary
  embedding; they are permuted back, so the graph uses the usual half-split rotation.
- The graph: inputs `input_ids` int64 [1, S] and, per layer, `past.<i>.key`/`.value` float32
  [1, kv_heads, P, head_dim]; outputs `logits` float32 [1, vocab] for the last position only
  and `present.<i>.key`/`.value` [1, kv_heads, P + S, head_dim]. Positions are P..P+S-1 and
  the causal mask is built in the graph, so one graph serves prefill (any S) and decoding
  (S = 1) of one sequence.
"""

import json
import pathlib
import sys

import gguf
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers import AddedToken

OPSET = 17
BLOCK = 32
# For checking the conversion only: every weight as float32, no quantization (~600 MB).
FLOAT = bool(int(__import__("os").environ.get("CONVERT_FLOAT", "0")))


def field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            sys.exit(f"the GGUF file has no {key}")
        return default
    return f.contents()


def dequantized(tensor):
    """The tensor as float32, numpy shape (rows, columns) = GGUF shape reversed."""
    data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    shape = [int(d) for d in reversed(tensor.shape)]
    return np.asarray(data, dtype=np.float32).reshape(shape)


def quantize_4bit(w):
    """w [N, K] float32 -> (packed [N, K/32, 16] uint8, scales [N*K/32], zero points
    [N * ceil(K/32 / 2)] uint8), asymmetric per block of 32 along K."""
    n, k = w.shape
    assert k % BLOCK == 0, f"input dimension {k} is not a multiple of {BLOCK}"
    blocks = w.reshape(n, k // BLOCK, BLOCK)
    lo = np.minimum(blocks.min(axis=2), 0.0)
    hi = np.maximum(blocks.max(axis=2), 0.0)
    scale = (hi - lo) / 15.0
    scale = np.where(scale == 0.0, 1.0, scale).astype(np.float32)
    zero = np.clip(np.round(-lo / scale), 0, 15).astype(np.uint8)
    q = np.clip(np.round(blocks / scale[:, :, None]) + zero[:, :, None], 0, 15).astype(np.uint8)
    return pack_4bit(q, scale, zero)


def q4_1_blocks(tensor):
    """A Q4_1 tensor's blocks as stored: values q [N, K/32, 32] in 0..15, scales d and
    minimums m [N, K/32], so that weight = d * q + m."""
    rows = int(tensor.shape[1])
    raw = np.asarray(tensor.data, dtype=np.uint8).reshape(rows, -1, 20)
    d = raw[:, :, 0:2].copy().view(np.float16)[:, :, 0].astype(np.float32)
    m = raw[:, :, 2:4].copy().view(np.float16)[:, :, 0].astype(np.float32)
    qs = raw[:, :, 4:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=2)  # ggml: low nibbles first, then high
    return q, d, m


def pack_4bit(q, scale, zero):
    """MatMulNBits' layout: element 2i in the low nibble of byte i, 2i+1 in the high one;
    zero points two to a byte, per row."""
    n, nb, _ = q.shape
    packed = (q[:, :, 0::2] | (q[:, :, 1::2] << 4)).astype(np.uint8)
    if nb % 2:
        zero = np.concatenate([zero, np.zeros((n, 1), np.uint8)], axis=1)
    zp = (zero[:, 0::2] | (zero[:, 1::2] << 4)).astype(np.uint8)
    return packed, scale.astype(np.float32).reshape(-1), zp.reshape(-1)


def unpermute(w, heads):
    """Undo llama.cpp's rotary permutation of a query/key projection's rows."""
    out, inp = w.shape
    return w.reshape(heads, out // heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


class Graph:
    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, hint):
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint, array):
        n = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(array), n))
        return n

    def op(self, kind, inputs, hint=None, domain=None, outputs=1, **attrs):
        names = [self.name(hint or kind.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(kind, inputs, names, domain=domain, **attrs))
        return names[0] if outputs == 1 else names

    def linear_exact(self, x, parts, hint):
        """Q4_1 layers that read the same input, exactly and as one: `parts` is a list of
        (tensor, heads) whose outputs are concatenated (heads: undo llama.cpp's rotary row
        permutation). weight = d*q + m = d*(q - z) + r with an integer zero point
        z = round(-m/d) and a remainder r = m + d*z per block: MatMulNBits takes d, q and
        z, and the remainder adds sum_b r[n, b] * (sum of x over block b), a float MatMul
        32 times smaller. Returns the outputs, one per part."""
        qs, ds, ms = [], [], []
        for tensor, heads in parts:
            q, d, m = q4_1_blocks(tensor)
            if heads is not None:
                n = q.shape[0]
                order = np.arange(n).reshape(heads, 2, n // heads // 2).swapaxes(1, 2).reshape(-1)
                inverse = np.argsort(order)
                q, d, m = q[inverse], d[inverse], m[inverse]
            qs.append(q), ds.append(d), ms.append(m)
        q, d, m = np.concatenate(qs), np.concatenate(ds), np.concatenate(ms)
        n, nb, _ = q.shape
        safe = np.where(d == 0.0, 1.0, d)
        zero = np.where(d == 0.0, 0.0, np.clip(np.round(-m / safe), 0, 15)).astype(np.uint8)
        remainder = (m + d * zero).astype(np.float32)  # [N, K/32]
        packed, scales, zp = pack_4bit(q, d, zero)
        main = self.op(
            "MatMulNBits",
            [x, self.const(hint + "_q", packed), self.const(hint + "_s", scales),
             self.const(hint + "_z", zp)],
            hint, domain="com.microsoft", K=nb * BLOCK, N=n, bits=4, block_size=BLOCK,
            accuracy_level=4,
        )
        blocks = self.op("Reshape", [x, self.const("shape", np.array([1, -1, nb, BLOCK], np.int64))])
        sums = self.op("ReduceSum", [blocks, self.const("axis", np.array([-1], np.int64))], keepdims=0)
        fix = self.op("MatMul", [sums, self.const(hint + "_r", remainder.T.copy())])
        out = self.op("Add", [main, fix], hint)
        if len(parts) == 1:
            return [out]
        sizes = self.const("sizes", np.array([q.shape[0] for q in qs], np.int64))
        return self.op("Split", [out, sizes], axis=-1, outputs=len(parts))

    def any_linear(self, x, parts, hint):
        """Linear layers from GGUF tensors that read the same input, `parts` as for
        linear_exact: Q4_1 exactly, anything else requantized."""
        if all(t.tensor_type == gguf.GGMLQuantizationType.Q4_1 for t, _ in parts) and not FLOAT:
            return self.linear_exact(x, parts, hint)
        outs = []
        for j, (tensor, heads) in enumerate(parts):
            w = dequantized(tensor)
            if heads is not None:
                w = unpermute(w, heads)
            if FLOAT:
                outs.append(self.op("MatMul", [x, self.const(f"{hint}{j}_w", w.T.copy())], hint))
            else:
                outs.append(self.linear(x, w, f"{hint}{j}"))
        return outs

    def linear_q8(self, x, values, scales, hint):
        """A Q8_0 layer (int8 values, a scale per 32), exactly: MatMulNBits with 8 bits
        holds them as value + 128 with the zero point 128."""
        n, k = values.shape
        packed = (values.astype(np.int16) + 128).astype(np.uint8).reshape(n, k // BLOCK, BLOCK)
        zp = np.full(n * (k // BLOCK), 128, np.uint8)
        return self.op(
            "MatMulNBits",
            [x, self.const(hint + "_q", packed), self.const(hint + "_s", scales.reshape(-1).astype(np.float32)),
             self.const(hint + "_z", zp)],
            hint, domain="com.microsoft", K=k, N=n, bits=8, block_size=BLOCK,
            accuracy_level=4,
        )

    def linear(self, x, w, hint):
        n, k = w.shape
        packed, scales, zp = quantize_4bit(w)
        return self.op(
            "MatMulNBits",
            [x, self.const(hint + "_q", packed), self.const(hint + "_s", scales),
             self.const(hint + "_z", zp)],
            hint, domain="com.microsoft", K=k, N=n, bits=4, block_size=BLOCK,
            accuracy_level=4,
        )

    def rms_norm(self, x, weight, eps, hint):
        sq = self.op("Mul", [x, x])
        mean = self.op("ReduceMean", [sq], axes=[-1], keepdims=1)
        denom = self.op("Sqrt", [self.op("Add", [mean, self.const("eps", np.float32(eps))])])
        return self.op("Mul", [self.op("Div", [x, denom]), self.const(hint, weight)], hint)


def convert(gguf_path, out_dir, name):
    reader = gguf.GGUFReader(gguf_path)
    arch = field(reader, "general.architecture")
    if arch != "llama":
        sys.exit(f"{gguf_path}: architecture {arch!r} is not supported (llama only)")
    layers = int(field(reader, "llama.block_count"))
    hidden = int(field(reader, "llama.embedding_length"))
    heads = int(field(reader, "llama.attention.head_count"))
    kv_heads = int(field(reader, "llama.attention.head_count_kv"))
    context = int(field(reader, "llama.context_length"))
    eps = float(field(reader, "llama.attention.layer_norm_rms_epsilon"))
    rope_base = float(field(reader, "llama.rope.freq_base", 10000.0))
    head_dim = hidden // heads
    groups = heads // kv_heads
    tensors = {t.name: t for t in reader.tensors}

    g = Graph()
    ids = "input_ids"

    # The embedding, exactly as stored (Q8_0: int8 values, one float16 scale per 32).
    embd = tensors["token_embd.weight"]
    if embd.tensor_type == gguf.GGMLQuantizationType.Q8_0:
        raw = np.asarray(embd.data, dtype=np.uint8).reshape(-1, 34)
        scales = raw[:, :2].copy().view(np.float16).astype(np.float32).reshape(-1, hidden // BLOCK)
        values = raw[:, 2:].copy().view(np.int8).reshape(-1, hidden)
        vocab = values.shape[0]
        rows = g.op("Cast", [g.op("Gather", [g.const("embd_q", values), ids])], to=TensorProto.FLOAT)
        row_scales = g.op("Gather", [g.const("embd_s", scales), ids])
        shaped = g.op("Reshape", [rows, g.const("shape", np.array([1, -1, hidden // BLOCK, BLOCK], np.int64))])
        scaled = g.op("Mul", [shaped, g.op("Unsqueeze", [row_scales, g.const("axis", np.array([-1], np.int64))])])
        x = g.op("Reshape", [scaled, g.const("shape", np.array([1, -1, hidden], np.int64))])
        head = (values.astype(np.float32).reshape(vocab, -1, BLOCK) * scales[:, :, None]).reshape(vocab, hidden)
        head_q8 = (values, scales)
    else:
        table = dequantized(embd)
        vocab = table.shape[0]
        head_q8 = None
        x = g.op("Gather", [g.const("embd", table.astype(np.float16)), ids])
        x = g.op("Cast", [x], to=TensorProto.FLOAT)
        head = table
    if "output.weight" in tensors:
        head = dequantized(tensors["output.weight"])
        head_q8 = None

    # Positions P..P+S-1 (P: the past's length), their rotary tables, the causal mask.
    past_len = g.op("Gather", [g.op("Shape", ["past.0.key"]), g.const("i", np.array(2, np.int64))])
    new_len = g.op("Gather", [g.op("Shape", [ids]), g.const("i", np.array(1, np.int64))])
    total = g.op("Add", [past_len, new_len])
    one = g.const("one", np.array(1, np.int64))
    positions = g.op("Range", [past_len, total, one])
    inv = rope_base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.arange(context, dtype=np.float64)[:, None] * inv[None, :]
    cos_table = np.concatenate([np.cos(angles)] * 2, axis=1).astype(np.float32)
    sin_table = np.concatenate([np.sin(angles)] * 2, axis=1).astype(np.float32)
    cos = g.op("Gather", [g.const("cos", cos_table), positions])  # [S, head_dim]
    sin = g.op("Gather", [g.const("sin", sin_table), positions])
    keys = g.op("Range", [g.const("zero", np.array(0, np.int64)), total, one])
    later = g.op("Greater", [
        g.op("Unsqueeze", [keys, g.const("axis", np.array([0], np.int64))]),
        g.op("Unsqueeze", [positions, g.const("axis", np.array([1], np.int64))]),
    ])
    mask = g.op("Where", [later, g.const("neg", np.float32(-1e9)), g.const("nil", np.float32(0))])
    half = head_dim // 2
    split_sizes = g.const("halves", np.array([half, half], np.int64))

    def rotate(t):
        a, b = g.op("Split", [t, split_sizes], axis=-1, outputs=2)
        rotated = g.op("Concat", [g.op("Neg", [b]), a], axis=-1)
        return g.op("Add", [g.op("Mul", [t, cos]), g.op("Mul", [rotated, sin])])

    def heads_first(t, n):
        t = g.op("Reshape", [t, g.const("shape", np.array([1, -1, n, head_dim], np.int64))])
        return g.op("Transpose", [t], perm=[0, 2, 1, 3])

    inputs = [helper.make_tensor_value_info(ids, TensorProto.INT64, [1, "sequence"])]
    outputs = []
    for i in range(layers):
        p = f"blk.{i}."
        h = g.rms_norm(x, dequantized(tensors[p + "attn_norm.weight"]).reshape(-1), eps, f"l{i}_attn_norm")
        q, k, v = g.any_linear(h, [
            (tensors[p + "attn_q.weight"], heads),
            (tensors[p + "attn_k.weight"], kv_heads),
            (tensors[p + "attn_v.weight"], None),
        ], f"l{i}_qkv")
        q = rotate(heads_first(q, heads))
        k = rotate(heads_first(k, kv_heads))
        v = heads_first(v, kv_heads)
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(
                f"past.{i}.{kind}", TensorProto.FLOAT, [1, kv_heads, "past", head_dim]))
            outputs.append(helper.make_tensor_value_info(
                f"present.{i}.{kind}", TensorProto.FLOAT, [1, kv_heads, "total", head_dim]))
        g.nodes.append(helper.make_node("Concat", [f"past.{i}.key", k], [f"present.{i}.key"], axis=2))
        g.nodes.append(helper.make_node("Concat", [f"past.{i}.value", v], [f"present.{i}.value"], axis=2))
        # Grouped-query attention: query heads [kv_heads, groups] share their kv head.
        qg = g.op("Reshape", [q, g.const("shape", np.array([1, kv_heads, groups, -1, head_dim], np.int64))])
        kg = g.op("Unsqueeze", [f"present.{i}.key", g.const("axis", np.array([2], np.int64))])
        vg = g.op("Unsqueeze", [f"present.{i}.value", g.const("axis", np.array([2], np.int64))])
        scores = g.op("MatMul", [qg, g.op("Transpose", [kg], perm=[0, 1, 2, 4, 3])])
        scores = g.op("Add", [g.op("Mul", [scores, g.const("scale", np.float32(head_dim ** -0.5))]), mask])
        attn = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), vg])
        attn = g.op("Reshape", [attn, g.const("shape", np.array([1, heads, -1, head_dim], np.int64))])
        attn = g.op("Transpose", [attn], perm=[0, 2, 1, 3])
        attn = g.op("Reshape", [attn, g.const("shape", np.array([1, -1, hidden], np.int64))])
        (o,) = g.any_linear(attn, [(tensors[p + "attn_output.weight"], None)], f"l{i}_o")
        x = g.op("Add", [x, o])
        h = g.rms_norm(x, dequantized(tensors[p + "ffn_norm.weight"]).reshape(-1), eps, f"l{i}_ffn_norm")
        gate, up = g.any_linear(h, [
            (tensors[p + "ffn_gate.weight"], None),
            (tensors[p + "ffn_up.weight"], None),
        ], f"l{i}_gate_up")
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])
        (down,) = g.any_linear(act, [(tensors[p + "ffn_down.weight"], None)], f"l{i}_down")
        x = g.op("Add", [x, down])

    x = g.rms_norm(x, dequantized(tensors["output_norm.weight"]).reshape(-1), eps, "final_norm")
    last = g.op("Gather", [x, g.const("last", np.array(-1, np.int64))], axis=1)  # [1, hidden]
    if FLOAT:
        logits = g.op("MatMul", [last, g.const("lm_head_w", head.T.copy())])
    elif head_q8 is not None:
        logits = g.linear_q8(last, *head_q8, "lm_head")
    else:
        logits = g.linear(last, head, "lm_head")
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    outputs.insert(0, helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, vocab]))

    graph = helper.make_graph(g.nodes, name, inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[
        helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, out / f"{name}.onnx")

    # The tokenizer: byte-level BPE from the GGUF vocabulary and merges, digits split one
    # by one (llama.cpp's `smollm` pre-tokenizer), control tokens special.
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges")]
    tokenizer = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    special = [tokens[i] for i, t in enumerate(types) if t == 3]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tokenizer.save(str(out / "tokenizer.json"))

    eos = int(field(reader, "tokenizer.ggml.eos_token_id"))
    template = field(reader, "tokenizer.chat_template", "")
    default_system = ""
    marker = "<|im_start|>system\n"
    if marker in template:
        default_system = template.split(marker, 1)[1].split("<|im_end|>", 1)[0]
    manifest = {
        "name": name,
        "file": f"{name}.onnx",
        "providers": ["cuda", "cpu"],
        "threads": 0,
        "generate": {
            "tokenizer": "tokenizer.json",
            "context": context,
            "layers": layers,
            "kv_heads": kv_heads,
            "head_dim": head_dim,
            "vocab": vocab,
            "chat_template": "chatml" if "<|im_start|>" in template else "plain",
            "default_system": default_system,
            "stop_tokens": [tokens[eos]],
            "source": pathlib.Path(gguf_path).name,
        },
    }
    (out / "model.toml").write_text(to_toml(manifest))


def to_toml(value, table=None):
    lines, tables = [], []
    for key, v in value.items():
        if isinstance(v, dict):
            tables.append((key, v))
        else:
            lines.append(f"{key} = {json.dumps(v, ensure_ascii=False)}")
    text = "\n".join(lines) + "\n"
    for key, v in tables:
        text += f"\n[{key}]\n" + to_toml(v)
    return text


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__.split("\n\n")[1])
    convert(*sys.argv[1:])
