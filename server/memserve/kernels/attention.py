"""The transformer ops of opsets 23-24: Attention, RotaryEmbedding, RMSNormalization.

Attention takes Q, K, V as (batch, heads, sequence, head size), or as (batch, sequence, heads x head
size) with q_num_heads / kv_num_heads; an optional mask (boolean: attend where true; float: added),
a past key/value cache it appends K/V to (present_key / present_value), and nonpad_kv_seqlen. With
fewer KV heads than query heads each KV head serves a group of query heads (GQA). Scores are
(Q * sqrt(s)) (K * sqrt(s))^T with s = scale or 1 / sqrt(head size), optionally soft-capped
(c * tanh(x / c)), plus the mask and, with is_causal, a causal mask aligned to the end of the cache;
a query row with no key to attend gets zeros. qk_matmul_output gives the scores (modes 0, 1), the
scores plus mask (2) or the probabilities (3). The scores, the largest array of the op, are planned
scratch that the softmax works in place on.
"""
from __future__ import annotations

import math

import numpy as np
from onnx import helper

from ..errors import UnsupportedModel
from . import Node, OpDef, TensorInfo, node_error, optional, register
from .shape import norm_axis

FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))




# -- Attention -------------------------------------------------------------------------------------------

def _attention_dims(node: Node, ins) -> dict:
    q, k, v = ins[0], ins[1], ins[2]
    a = node.attrs
    if q.dtype not in FLOATS or k.dtype != q.dtype or v.dtype != q.dtype:
        raise node_error(node, f"Q, K and V must share one float type, got {q.dtype}, {k.dtype}, {v.dtype}")
    rank = len(q.shape)
    if rank not in (3, 4) or len(k.shape) != rank or len(v.shape) != rank:
        raise node_error(node, f"Q, K and V must all be 3-D or all 4-D, got {q.shape}, {k.shape}, {v.shape}")
    if rank == 3:
        hq, hkv = a.get("q_num_heads", 0), a.get("kv_num_heads", 0)
        if hq < 1 or hkv < 1 or q.shape[2] % hq or k.shape[2] % hkv or v.shape[2] % hkv:
            raise node_error(node, f"3-D inputs need q_num_heads and kv_num_heads dividing the hidden sizes "
                              f"{q.shape[2]}, {k.shape[2]}, {v.shape[2]}")
        b, sq, d = q.shape[0], q.shape[1], q.shape[2] // hq
        skv, dk, dv = k.shape[1], k.shape[2] // hkv, v.shape[2] // hkv
        if v.shape[1] != skv:
            raise node_error(node, "K and V must have one sequence length")
    else:
        b, hq, sq, d = q.shape
        _, hkv, skv, dk = k.shape
        dv = v.shape[3]
        if v.shape[:3] != (b, hkv, skv):
            raise node_error(node, f"V {v.shape} does not match K {k.shape}")
    if k.shape[0] != b or v.shape[0] != b or dk != d or hq % hkv:
        raise node_error(node, f"K {k.shape} and V {v.shape} do not fit Q {q.shape} (head size, batch, "
                          "or query heads not a multiple of KV heads)")
    past_k, past_v = optional(ins, 4), optional(ins, 5)
    if (past_k is None) != (past_v is None):
        raise node_error(node, "past_key and past_value come together")
    past = 0
    if past_k is not None:
        past = past_k.shape[2] if len(past_k.shape) == 4 else -1
        if past_k.shape != (b, hkv, past, d) or past_v.shape != (b, hkv, past, dv):
            raise node_error(node, f"past_key {past_k.shape} / past_value {past_v.shape} must be (batch, KV heads, "
                              "past length, head size)")
    if optional(ins, 6) is not None and past_k is not None:
        raise node_error(node, "nonpad_kv_seqlen cannot be combined with a past cache")
    mask = optional(ins, 3)
    total = past + skv
    if mask is not None:
        if mask.dtype != np.dtype(bool) and mask.dtype != q.dtype:
            raise node_error(node, f"the mask must be boolean or {q.dtype}, got {mask.dtype}")
        if not mask.shape or mask.shape[-1] > total or len(mask.shape) > 4:
            raise node_error(node, f"the mask {mask.shape} must end in at most {total} keys")
        try:
            np.broadcast_shapes(mask.shape[:-1] + (total,), (b, hq, sq, total))
        except ValueError:
            raise node_error(node, f"the mask {mask.shape} does not broadcast to {(b, hq, sq, total)}") from None
    if a.get("softmax_precision") not in (None, 1, 10, 11, 16):
        raise UnsupportedModel(f"node {node.name!r} (Attention): softmax_precision {a['softmax_precision']} "
                               "is not supported")
    for side in ("left_window_size", "right_window_size"):
        if a.get(side, -1) < -1:
            raise node_error(node, f"{side} must be -1 (unbounded) or at least 0, got {a[side]}")
    return {"rank": rank, "b": b, "hq": hq, "hkv": hkv, "sq": sq, "skv": skv, "d": d, "dv": dv, "past": past,
            "total": total}


def _attention_infer(node, ins):
    g = _attention_dims(node, ins)
    t = ins[0].dtype
    y = (g["b"], g["sq"], g["hq"] * g["dv"]) if g["rank"] == 3 else (g["b"], g["hq"], g["sq"], g["dv"])
    return [TensorInfo(t, y), TensorInfo(t, (g["b"], g["hkv"], g["total"], g["d"])),
            TensorInfo(t, (g["b"], g["hkv"], g["total"], g["dv"])),
            TensorInfo(t, (g["b"], g["hq"], g["sq"], g["total"]))][:max(len(node.outputs), 1)]


def _heads(x: np.ndarray, heads: int, rank: int) -> np.ndarray:
    """(batch, sequence, heads x size) as a (batch, heads, sequence, size) view; 4-D as it is."""
    return x if rank == 4 else x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(0, 2, 1, 3)


def _bias(node: Node, g: dict, mask, seqlen, dtype) -> np.ndarray:
    """The additive mask: 0 where a query may attend a key, -inf where not (or the float mask)."""
    sq, total = g["sq"], g["total"]
    bias = np.zeros((sq, total), dtype)
    if mask is not None:
        pad = total - mask.shape[-1]
        if mask.dtype == np.dtype(bool):
            mask = np.where(mask, dtype.type(0), dtype.type(-np.inf))
        if pad:
            mask = np.concatenate([mask, np.full(mask.shape[:-1] + (pad,), -np.inf, dtype)], axis=-1)
        bias = bias + mask
    rows = np.arange(sq).reshape(sq, 1)
    cols = np.arange(total).reshape(1, total)
    if node.attrs.get("is_causal", 0):
        if seqlen is not None:  # an external cache: each batch entry's queries end at its own length
            offset = (seqlen.astype(np.int64) - sq).reshape(-1, 1, 1, 1)
        else:
            offset = g["past"]
        bias = bias + np.where(cols <= rows + offset, dtype.type(0), dtype.type(-np.inf))
    left, right = node.attrs.get("left_window_size", -1), node.attrs.get("right_window_size", -1)
    if left >= 0 or right >= 0:  # a query at p = offset + i attends keys p - left .. p + right
        if seqlen is not None and not g["past"]:
            offset = (seqlen.astype(np.int64) - sq).reshape(-1, 1, 1, 1)
        else:
            offset = g["past"]
        diff = rows + offset - cols
        allowed = np.ones(np.shape(diff), bool)
        if left >= 0:
            allowed &= diff <= left
        if right >= 0:
            allowed &= -diff <= right
        bias = bias + np.where(allowed, dtype.type(0), dtype.type(-np.inf))
    if seqlen is not None:
        valid = cols.reshape(1, 1, 1, total) < seqlen.astype(np.int64).reshape(-1, 1, 1, 1)
        bias = bias + np.where(valid, dtype.type(0), dtype.type(-np.inf))
    return bias


def _build_attention(node, ins, outs):
    g = _attention_dims(node, ins)
    a = node.attrs
    dtype = ins[0].dtype
    scale = a.get("scale")
    root = dtype.type(math.sqrt(scale if scale is not None else 1 / math.sqrt(g["d"])))
    cap = a.get("softcap", 0.0)
    mode = a.get("qk_matmul_output_mode", 0)
    precision = a.get("softmax_precision")
    soft_type = np.dtype(helper.tensor_dtype_to_np_dtype(precision)) if precision else dtype
    n_out = len(node.outputs)
    group = g["hq"] // g["hkv"]

    def run(i, o):
        q = _heads(i[0], g["hq"], g["rank"])
        k = _heads(i[1], g["hkv"], g["rank"])
        v = _heads(i[2], g["hkv"], g["rank"])
        if optional(i, 4) is not None:
            k, v = np.concatenate([i[4], k], axis=2), np.concatenate([i[5], v], axis=2)
        if n_out > 1:
            np.copyto(o[1], k)
        if n_out > 2:
            np.copyto(o[2], v)
        if group > 1:
            k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        s = o[n_out]  # the (batch, heads, queries, keys) scores: planned scratch, the largest array here
        np.matmul(q * root, np.swapaxes(k * root, -1, -2), out=s)
        if cap > 0:
            s /= dtype.type(cap)
            np.tanh(s, out=s)
            s *= dtype.type(cap)
        if n_out > 3 and mode in (0, 1):
            np.copyto(o[3], s)
        bias = _bias(node, g, optional(i, 3), optional(i, 6), dtype)
        s += bias
        if n_out > 3 and mode == 2:
            np.copyto(o[3], s)
        p = s if soft_type == dtype else s.astype(soft_type)
        top = p.max(axis=-1, keepdims=True)
        p -= np.where(np.isneginf(top), 0, top)
        np.exp(p, out=p)
        total = p.sum(axis=-1, keepdims=True)
        p /= np.where(total == 0, 1, total)
        # A query with no key to attend (its mask all -inf) gets zeros, whatever its scores were.
        blind = np.isneginf(bias.max(axis=-1, keepdims=True))
        if blind.any():
            np.copyto(p, 0, where=np.broadcast_to(blind, p.shape))
        if p is not s:
            np.copyto(s, p, casting="unsafe")
        if n_out > 3 and mode == 3:
            np.copyto(o[3], s)
        if g["rank"] == 4:
            np.matmul(s, v, out=o[0])
        else:
            np.copyto(o[0], np.matmul(s, v).transpose(0, 2, 1, 3).reshape(o[0].shape))

    return run


def _attention_scratch(node, ins, outs):
    g = _attention_dims(node, ins)
    return [TensorInfo(ins[0].dtype, (g["b"], g["hq"], g["sq"], g["total"]))]


# -- RMSNormalization ----------------------------------------------------------------------------------

def _rms_infer(node, ins):
    x, scale = ins[0], ins[1]
    if x.dtype not in FLOATS or not x.shape:
        raise node_error(node, f"X must be a float tensor of rank 1 or more, got {x.dtype} {x.shape}")
    axis = norm_axis(node, node.attrs.get("axis", -1), len(x.shape))
    try:
        np.broadcast_shapes(scale.shape, x.shape[axis:])
    except ValueError:
        raise node_error(node, f"scale {scale.shape} does not broadcast to {x.shape[axis:]}") from None
    return [TensorInfo(x.dtype, x.shape)]


def _build_rms(node, ins, outs):
    axis = norm_axis(node, node.attrs.get("axis", -1), len(ins[0].shape))
    axes = tuple(range(axis, len(ins[0].shape)))
    eps = node.attrs.get("epsilon", 1e-5)
    wide = np.float64 if ins[0].dtype == np.dtype(np.float64) else np.float32  # stash_type 1: float32

    def run(i, o):
        x = i[0].astype(wide, copy=False)
        mean = np.mean(np.square(x), axis=axes, keepdims=True)
        np.copyto(o[0], x / np.sqrt(mean + eps) * i[1], casting="unsafe")

    return run


# -- RotaryEmbedding -------------------------------------------------------------------------------------

def _rotary_dims(node: Node, ins) -> tuple[int, int, int, int]:
    x, cos, sin = ins[0], ins[1], ins[2]
    pos = optional(ins, 3)
    if x.dtype not in FLOATS or cos.dtype != x.dtype or sin.dtype != x.dtype:
        raise node_error(node, "input, cos_cache and sin_cache must share one float type")
    if len(x.shape) == 4:
        b, heads, s, d = x.shape
    elif len(x.shape) == 3:
        heads = node.attrs.get("num_heads", 0)
        if heads < 1 or x.shape[2] % heads:
            raise node_error(node, f"3-D input needs num_heads dividing its hidden size {x.shape[2]}")
        b, s, d = x.shape[0], x.shape[1], x.shape[2] // heads
    else:
        raise node_error(node, f"input must be 3-D or 4-D, got {x.shape}")
    rot = node.attrs.get("rotary_embedding_dim", 0) or d
    if rot % 2 or rot > d:
        raise node_error(node, f"rotary_embedding_dim {rot} must be even and at most the head size {d}")
    if cos.shape != sin.shape or cos.shape[-1:] != (rot // 2,):
        raise node_error(node, f"cos_cache {cos.shape} and sin_cache {sin.shape} must end in {rot // 2}")
    if pos is None and cos.shape != (b, s, rot // 2):
        raise node_error(node, f"without position_ids the caches must be {(b, s, rot // 2)}, got {cos.shape}")
    if pos is not None and (pos.shape != (b, s) or len(cos.shape) != 2 or pos.dtype.kind not in "iu"):
        raise node_error(node, f"position_ids must be integers of shape {(b, s)}, with 2-D caches")
    return heads, d, rot, s


def _rotary_infer(node, ins):
    _rotary_dims(node, ins)
    return [TensorInfo(ins[0].dtype, ins[0].shape)]


def _build_rotary(node, ins, outs):
    heads, d, rot, _ = _rotary_dims(node, ins)
    interleaved = node.attrs.get("interleaved", 0)
    four = len(ins[0].shape) == 4

    def run(i, o):
        x = i[0].transpose(0, 2, 1, 3) if four else i[0].reshape(i[0].shape[0], i[0].shape[1], heads, d)
        cos, sin = i[1], i[2]
        if optional(i, 3) is not None:
            pos = i[3]
            if pos.size and (pos.min() < 0 or pos.max() >= cos.shape[0]):
                raise node_error(node, f"position id out of range [0, {cos.shape[0]}) on this request")
            cos, sin = cos[pos], sin[pos]
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # (batch, sequence, 1, rot / 2): every head
        y = o[0].transpose(0, 2, 1, 3) if four else o[0].reshape(x.shape)
        y[...] = x
        part = x[..., :rot]
        a, b = (part[..., 0::2], part[..., 1::2]) if interleaved else (part[..., :rot // 2], part[..., rot // 2:])
        ya, yb = (y[..., 0:rot:2], y[..., 1:rot:2]) if interleaved else (y[..., :rot // 2], y[..., rot // 2:rot])
        real, imag = cos * a - sin * b, sin * a + cos * b
        ya[...] = real
        yb[...] = imag

    return run


register(OpDef("Attention", _attention_infer, _build_attention, scratch=_attention_scratch))
register(OpDef("RMSNormalization", _rms_infer, _build_rms))
register(OpDef("RotaryEmbedding", _rotary_infer, _build_rotary))
