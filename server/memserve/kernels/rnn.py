"""Recurrent layers: RNN, GRU and LSTM, forward, reverse and bidirectional, with sequence_lens.

Each direction runs its steps in order: the input projection X @ W^T for every step is one GEMM up
front (into planned scratch), then each step adds H @ R^T and the biases, applies the gates'
activations and updates the state. A batch entry whose sequence ended (sequence_lens) writes zeros to
Y and keeps its state, so Y_h / Y_c hold each entry's last valid step; the reverse direction starts at
each entry's own last step, as the ONNX spec says.
"""
from __future__ import annotations

import numpy as np
from scipy import special

from ..errors import UnsupportedModel
from . import Node, OpDef, TensorInfo, node_error, register

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}
# name -> (alpha default, beta default) for those that take them, else None
PARAMETERS = {"Sigmoid": None, "Tanh": None, "Relu": None, "Softsign": None, "Softplus": None,
              "LeakyRelu": (0.01, None), "ThresholdedRelu": (1.0, None), "Elu": (1.0, None),
              "HardSigmoid": (0.2, 0.5), "Affine": (1.0, 0.0), "ScaledTanh": (1.0, 1.0)}



def _activation(name: str, alpha: float | None, beta: float | None):
    return {
        "Sigmoid": special.expit, "Tanh": np.tanh, "Relu": lambda x: np.maximum(x, 0),
        "Softsign": lambda x: x / (1 + np.abs(x)), "Softplus": lambda x: np.logaddexp(0, x),
        "LeakyRelu": lambda x: np.where(x >= 0, x, alpha * x),
        "ThresholdedRelu": lambda x: np.where(x > alpha, x, 0),
        "Elu": lambda x: np.where(x >= 0, x, alpha * (np.exp(x) - 1)),
        "HardSigmoid": lambda x: np.clip(alpha * x + beta, 0, 1),
        "Affine": lambda x: alpha * x + beta, "ScaledTanh": lambda x: alpha * np.tanh(beta * x),
    }[name]


def _activations(node: Node, dirs: int) -> list[list]:
    """Per direction, the activation functions, their alphas and betas consumed in order."""
    names = node.attrs.get("activations") or DEFAULT_ACTIVATIONS[node.op_type] * dirs
    per = len(DEFAULT_ACTIVATIONS[node.op_type])
    if len(names) != per * dirs:
        raise node_error(node, f"{len(names)} activations; it needs {per} per direction")
    alphas, betas = list(node.attrs.get("activation_alpha", [])), list(node.attrs.get("activation_beta", []))
    fns = []
    for name in names:
        name = name if isinstance(name, str) else name.decode()
        if name not in PARAMETERS:
            raise UnsupportedModel(f"node {node.name!r} ({node.op_type}): activation {name!r} is not supported")
        defaults = PARAMETERS[name]
        alpha = beta = None
        if defaults is not None:
            alpha = alphas.pop(0) if alphas else defaults[0]
            beta = (betas.pop(0) if betas else defaults[1]) if defaults[1] is not None else None
        fns.append(_activation(name, alpha, beta))
    return [fns[d * per:(d + 1) * per] for d in range(dirs)]


def _parts(node: Node, ins) -> tuple[int, int, int, int, int, int]:
    """(dirs, gates, hidden, seq, batch, features), every input's shape checked against them."""
    direction = node.attrs.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise node_error(node, f"direction {direction!r} is not forward, reverse or bidirectional")
    dirs, gates = 2 if direction == "bidirectional" else 1, GATES[node.op_type]
    x, w, r = ins[0], ins[1], ins[2]
    if len(x.shape) != 3:
        raise node_error(node, f"X must be 3-D, got {x.shape}")
    seq, batch, feat = x.shape if not node.attrs.get("layout", 0) else (x.shape[1], x.shape[0], x.shape[2])
    hidden = node.attrs.get("hidden_size") or (r.shape[-1] if len(r.shape) == 3 else 0)
    want = {1: (dirs, gates * hidden, feat), 2: (dirs, gates * hidden, hidden), 3: (dirs, 2 * gates * hidden),
            4: (batch,), 5: (dirs, batch, hidden), 6: (dirs, batch, hidden), 7: (dirs, 3 * hidden)}
    names = {1: "W", 2: "R", 3: "B", 4: "sequence_lens", 5: "initial_h", 6: "initial_c", 7: "P"}
    for k, shape in want.items():
        if k < len(ins) and ins[k] is not None:
            got = ins[k].shape
            if node.attrs.get("layout", 0) and k in (5, 6):
                shape = (batch, dirs, hidden)
            if got != shape:
                raise node_error(node, f"{names[k]} must have shape {shape}, got {got}")
    if hidden < 1 or w.dtype != x.dtype or r.dtype != x.dtype or x.dtype.kind != "f":
        raise node_error(node, f"needs hidden_size >= 1 and float W, R of X's type ({x.dtype})")
    if len(ins) > 4 and ins[4] is not None and ins[4].dtype.kind not in "iu":
        raise node_error(node, f"sequence_lens must be integers, got {ins[4].dtype}")
    return dirs, gates, hidden, seq, batch, feat


def _infer(node, ins):
    dirs, _, hidden, seq, batch, _ = _parts(node, ins)
    layout = node.attrs.get("layout", 0)
    y = (batch, seq, dirs, hidden) if layout else (seq, dirs, batch, hidden)
    state = (batch, dirs, hidden) if layout else (dirs, batch, hidden)
    outs = [TensorInfo(ins[0].dtype, y), TensorInfo(ins[0].dtype, state)]
    if node.op_type == "LSTM":
        outs.append(TensorInfo(ins[0].dtype, state))
    return outs[:max(len(node.outputs), 1)]


def _scratch(node, ins, outs):
    dirs, gates, hidden, seq, batch, _ = _parts(node, ins)
    return [TensorInfo(ins[0].dtype, (seq, batch, gates * hidden))]  # one direction's input projections


def _build(node, ins, outs):
    dirs, gates, hidden, seq, batch, feat = _parts(node, ins)
    acts = _activations(node, dirs)
    layout, clip = node.attrs.get("layout", 0), node.attrs.get("clip")
    present = [k < len(ins) and ins[k] is not None for k in range(8)]
    n_out = len(node.outputs)  # every output has an array (unused ones too); then the scratch
    forward = node.attrs.get("direction", "forward") != "reverse"
    step = _STEPS[node.op_type]

    def run(i, o):
        x = i[0] if not layout else i[0].transpose(1, 0, 2)
        lens = np.clip(i[4].astype(np.int64), 0, seq) if present[4] else np.full(batch, seq, np.int64)
        proj = o[n_out]
        ys = [o[k] for k in range(n_out)]
        y = ys[0] if ys else None
        if y is not None:
            y.fill(0)
        for d in range(dirs):
            w, r = i[1][d], i[2][d]
            b = i[3][d].reshape(2, gates * hidden) if present[3] else np.zeros((2, gates * hidden), x.dtype)
            state = _initial(i, o, d, present, layout, batch, hidden, x.dtype)
            np.matmul(x, w.T, out=proj)
            proj += b[0]
            reverse = (d == 1) or not forward
            for t in range(seq):
                live = lens > t
                idx = np.where(live, lens - 1 - t, 0) if reverse else np.full(batch, t)
                xt = proj[idx, np.arange(batch)]
                new = step(node, xt, state, r, b[1], acts[d], hidden, clip, i[7][d] if present[7] else None)
                for s, n in zip(state, new):
                    s[live] = n[live]
                if y is not None:
                    h = state[0]
                    rows = np.nonzero(live)[0]
                    if layout:
                        y[rows, idx[rows], d] = h[rows]
                    else:
                        y[idx[rows], d, rows] = h[rows]
            for k, s in enumerate(state):
                if k + 1 < n_out:
                    (ys[k + 1][:, d] if layout else ys[k + 1][d])[...] = s

    return run


def _initial(i, o, d, present, layout, batch, hidden, dtype) -> list[np.ndarray]:
    state = []
    for k in (5, 6):  # initial_h, initial_c (RNN and GRU carry a c they never use)
        v = i[k] if present[k] else None
        if v is not None:
            state.append(np.array(v[:, d] if layout else v[d], dtype))
        else:
            state.append(np.zeros((batch, hidden), dtype))
    return state


def _gate(v: np.ndarray, clip) -> np.ndarray:
    return np.clip(v, -clip, clip) if clip is not None else v


def _rnn_step(node, xt, state, r, rb, acts, hidden, clip, p):
    h = state[0]
    return [acts[0](_gate(xt + h @ r.T + rb, clip)), state[1]]


def _gru_step(node, xt, state, r, rb, acts, hidden, clip, p):
    h = state[0]
    f, g = acts
    rz = h @ r[:2 * hidden].T + rb[:2 * hidden]
    z = f(_gate(xt[:, :hidden] + rz[:, :hidden], clip))
    rr = f(_gate(xt[:, hidden:2 * hidden] + rz[:, hidden:], clip))
    rh, bh = r[2 * hidden:], rb[2 * hidden:]
    if node.attrs.get("linear_before_reset", 0):
        cand = xt[:, 2 * hidden:] + rr * (h @ rh.T + bh)
    else:
        cand = xt[:, 2 * hidden:] + (rr * h) @ rh.T + bh
    hh = g(_gate(cand, clip))
    return [(1 - z) * hh + z * h, state[1]]


def _lstm_step(node, xt, state, r, rb, acts, hidden, clip, p):
    h, c = state
    f, g, hf = acts
    v = xt + h @ r.T + rb
    pi, po, pf = (p[:hidden], p[hidden:2 * hidden], p[2 * hidden:]) if p is not None else (0, 0, 0)
    it = f(_gate(v[:, :hidden] + pi * c, clip))
    ft = 1 - it if node.attrs.get("input_forget", 0) else f(_gate(v[:, 2 * hidden:3 * hidden] + pf * c, clip))
    ct = g(_gate(v[:, 3 * hidden:], clip))
    c2 = ft * c + it * ct
    ot = f(_gate(v[:, hidden:2 * hidden] + po * c2, clip))
    return [ot * hf(c2), c2]


_STEPS = {"RNN": _rnn_step, "GRU": _gru_step, "LSTM": _lstm_step}

for _op in ("RNN", "GRU", "LSTM"):
    register(OpDef(_op, _infer, _build, scratch=_scratch))
