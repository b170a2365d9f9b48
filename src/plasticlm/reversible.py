"""Reversible stack: activations are rebuilt from block outputs instead of being stored.

Forward runs every block without a graph and keeps only the stack's outputs. Backward walks
the blocks top-down: it reconstructs a block's inputs from its outputs (DESIGN 1.1, given the
block's start state), recomputes that one block with a graph, and backpropagates through it.
Activation memory is one block's, whatever the depth.

A block's state is a dict of tensors (its memory, and e.g. its convolution's last inputs); the
autograd function sees them flattened, every layer's in the same key order.
"""
from __future__ import annotations

import torch


class ReversibleStack(torch.autograd.Function):
    @staticmethod
    def forward(ctx, blocks, kinds, x1, x2, *states_and_params):
        n, k = len(blocks), len(kinds)
        states = states_and_params[:n * k]
        with torch.no_grad():
            finals = []
            for i, block in enumerate(blocks):
                x1, x2, S = block.forward_rev(x1, x2, dict(zip(kinds, states[i * k:(i + 1) * k])))
                finals += [S[kind] for kind in kinds]
        ctx.blocks, ctx.kinds = blocks, kinds
        ctx.autocast = (x1.device.type, torch.is_autocast_enabled(x1.device.type),
                        torch.get_autocast_dtype(x1.device.type))
        ctx.save_for_backward(x1, x2, *states)
        return (x1, x2, *finals)

    @staticmethod
    def backward(ctx, dy1, dy2, *d_finals):
        y1, y2, *states = ctx.saved_tensors
        blocks, kinds, k = ctx.blocks, ctx.kinds, len(ctx.kinds)
        device_type, enabled, dtype = ctx.autocast
        d_states, d_params = [], []
        for i in reversed(range(len(blocks))):
            block = blocks[i]
            S = dict(zip(kinds, states[i * k:(i + 1) * k]))
            dS = d_finals[i * k:(i + 1) * k]
            with torch.no_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
                x1, x2 = block.inverse(y1, y2, S)
            with torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
                x1g, x2g = (t.detach().requires_grad_() for t in (x1, x2))
                Sg = {kind: t.detach().requires_grad_() for kind, t in S.items()}
                o1, o2, So = block.forward_rev(x1g, x2g, Sg)
            params = list(block.parameters())
            outs, grads = [o1, o2], [dy1, dy2]
            for kind, g in zip(kinds, dS):
                if g is not None:
                    outs.append(So[kind])
                    grads.append(g)
            g = torch.autograd.grad(outs, [x1g, x2g, *(Sg[kind] for kind in kinds), *params], grads,
                                    allow_unused=True)
            dy1, dy2 = g[0], g[1]
            d_states.append(g[2:2 + k])
            d_params.append(g[2 + k:])
            y1, y2 = x1, x2
        flat_states = [d for layer in reversed(d_states) for d in layer]
        flat_params = [p for block_grads in reversed(d_params) for p in block_grads]
        return (None, None, dy1, dy2, *flat_states, *flat_params)


def reversible_stack(blocks, x1, x2, states: list[dict[str, torch.Tensor]]):
    """Run ``blocks`` as a reversible stack from per-block state dicts; returns (y1, y2, final state dicts)."""
    kinds = tuple(states[0])
    flat = [S[kind] for S in states for kind in kinds]
    params = [p for b in blocks for p in b.parameters()]
    out = ReversibleStack.apply(blocks, kinds, x1, x2, *flat, *params)
    finals = out[2:]
    return out[0], out[1], [dict(zip(kinds, finals[i * len(kinds):(i + 1) * len(kinds)]))
                            for i in range(len(blocks))]
