"""Reversible stack: activations are rebuilt from block outputs instead of being stored.

Forward runs every block without a graph and keeps only the stack's outputs. Backward walks
the blocks top-down: it reconstructs a block's inputs from its outputs (DESIGN 1.1, given the
block's start state), recomputes that one block with a graph, and backpropagates through it.
Activation memory is one block's, whatever the depth.
"""
from __future__ import annotations

import torch


class ReversibleStack(torch.autograd.Function):
    @staticmethod
    def forward(ctx, blocks, x1, x2, *states_and_params):
        n = len(blocks)
        states = states_and_params[:n]
        with torch.no_grad():
            finals = []
            for block, S in zip(blocks, states):
                x1, x2, S = block.forward_rev(x1, x2, S)
                finals.append(S)
        ctx.blocks = blocks
        ctx.autocast = (x1.device.type, torch.is_autocast_enabled(x1.device.type),
                        torch.get_autocast_dtype(x1.device.type))
        ctx.save_for_backward(x1, x2, *states)
        return (x1, x2, *finals)

    @staticmethod
    def backward(ctx, dy1, dy2, *d_finals):
        y1, y2, *states = ctx.saved_tensors
        device_type, enabled, dtype = ctx.autocast
        d_states, d_params = [], []
        for block, S, dS in zip(reversed(ctx.blocks), reversed(states), reversed(d_finals)):
            with torch.no_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
                x1, x2 = block.inverse(y1, y2, S)
            with torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
                x1g, x2g, Sg = (t.detach().requires_grad_() for t in (x1, x2, S))
                o1, o2, So = block.forward_rev(x1g, x2g, Sg)
            params = list(block.parameters())
            outs, grads = [o1, o2], [dy1, dy2]
            if dS is not None:
                outs.append(So)
                grads.append(dS)
            g = torch.autograd.grad(outs, [x1g, x2g, Sg, *params], grads, allow_unused=True)
            dy1, dy2 = g[0], g[1]
            d_states.append(g[2])
            d_params.append(g[3:])
            y1, y2 = x1, x2
        flat_params = [p for block_grads in reversed(d_params) for p in block_grads]
        return (None, dy1, dy2, *reversed(d_states), *flat_params)


def reversible_stack(blocks, x1, x2, states):
    """Run ``blocks`` as a reversible stack; returns (y1, y2, final states)."""
    params = [p for b in blocks for p in b.parameters()]
    out = ReversibleStack.apply(blocks, x1, x2, *states, *params)
    return out[0], out[1], list(out[2:])
