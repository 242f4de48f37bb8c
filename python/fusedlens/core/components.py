"""The model's parts whose outputs add up to the final residual, and one forward that captures them.

z^L = embed + Σ_i (attn.i + mlp.i): each block's attention and MLP outputs *as added to the
residual* (after the post-norms of Gemma 2 and 3). An attention output splits further into its
heads, head.i.h = (its slice of the output projection's input) · (that slice of the projection),
plus the projection's bias; an MLP output into its neurons, neuron.i.j = activation_j · row j of
the down projection, plus that bias. Grouped-query attention changes nothing here: the output
projection always reads one slice per query head. A post-norm is linear once its scale σ is
frozen at the value the forward used, so heads and neurons pass through it exactly. Where the
parts live is core.structure's business.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .capture import ResidualCapture, check_batch
from .models import AdapterError, LensModel, final_norm_from_module
from .readout import FinalNorm
from .structure import block_parts, first_tensor, n_heads, n_kv_heads, projection_weight, value_heads, value_projection


@dataclass
class Frozen:
    """A norm with its scale frozen at the forward's values: norm(x) = gain ⊙ centre(x) + bias, row by row.

    Applied to any part c of x, gain ⊙ centre(c) is that part's exact share (centre subtracts the
    mean for LayerNorm and is the identity for RMSNorm)."""

    gain: torch.Tensor  # [rows, d]
    centred: bool
    bias: torch.Tensor | None  # [d]

    @classmethod
    def of(cls, norm: FinalNorm, x: torch.Tensor) -> "Frozen":
        xc = x - x.mean(-1, keepdim=True) if norm.kind == "layernorm" else x
        inv_sigma = torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + norm.eps)
        scale = norm.scale(x.dtype)
        gain = inv_sigma.expand_as(x) if scale is None else inv_sigma * scale
        return cls(gain, norm.kind == "layernorm", None if norm.bias is None else norm.bias.to(x.dtype))

    def __call__(self, c: torch.Tensor) -> torch.Tensor:
        """c [..., rows, d] (parts of the normalised input) → their shares of the output (no bias)."""
        if self.centred:
            c = c - c.mean(-1, keepdim=True)
        return c * self.gain


@dataclass
class Components:
    """One forward's parts, real positions only ([rows, ...], rows in batch-major order).

    embed, final: [rows, d] (final = the last block's output, pre-norm); attn, mlp: [layers, rows, d]
    as added to the residual. With heads: head_z [layers, rows, heads * d_head] (the output
    projections' inputs), out_proj (each projection's weight [in, out]), attn_post (each block's
    frozen attention post-norm or None) and attn_bias [layers, rows, d] (the projection's bias as
    added, zero where there is none); `heads()` builds the per-head vectors from them. With neurons:
    neuron_acts [layers, rows, d_ff], down (the down projections [in, out]), mlp_post and mlp_bias,
    likewise."""

    embed: torch.Tensor
    final: torch.Tensor
    attn: torch.Tensor
    mlp: torch.Tensor
    n_heads: int | None = None
    head_z: torch.Tensor | None = None
    out_proj: list | None = None
    attn_post: list | None = None
    attn_bias: torch.Tensor | None = None
    neuron_acts: torch.Tensor | None = None
    down: list | None = None
    mlp_post: list | None = None
    mlp_bias: torch.Tensor | None = None
    # per-source decomposition of chosen heads: layer -> (attention weights [batch, heads, seq, seq],
    # value vectors [batch, seq, heads, d_head] (kv heads repeated)); mask [batch, seq] locates the rows
    sources: dict | None = None
    mask: torch.Tensor | None = None

    def source_effects(self, layer: int, head: int, rho: torch.Tensor) -> torch.Tensor:
        """Head (layer, head)'s direct effect along rho [rows, d], split by source position: [rows, seq], where
        entry (t, s) is A_h(t, s) · (v_h(s) W_O^h) · Pᵀρ_t; each row sums to the head's effect at t."""
        weights, values = self.sources[layer]
        d_head = values.shape[-1]
        w = self.out_proj[layer][head * d_head:(head + 1) * d_head].to(values.dtype)  # [d_head, d]
        u = values[:, :, head] @ w  # [batch, seq, d]: each source's value through the head's projection
        post = self.attn_post[layer]
        r = rho if post is None else adjoint(post, rho)
        b, t = self.mask.nonzero(as_tuple=True)
        per_source = torch.einsum("nsd,nd->ns", u[b], r)  # [rows, seq]
        return weights[b, head, t].to(per_source.dtype) * per_source

    def heads(self, layers=None) -> torch.Tensor:
        """Each head's output as added to the residual: [layers, heads, rows, d] (a tensor heads × d_model wide
        per row: for a corpus, read head effects through `head_effects` instead)."""
        out = []
        for i in range(self.attn.shape[0]) if layers is None else layers:
            z = self.head_z[i]
            zh = z.reshape(z.shape[0], self.n_heads, -1).transpose(0, 1)  # [H, rows, dh]
            w = self.out_proj[i].to(z.dtype)
            h = torch.bmm(zh, w.reshape(self.n_heads, -1, w.shape[1]))  # [H, rows, d]
            out.append(h if self.attn_post[i] is None else self.attn_post[i](h))
        return torch.stack(out)

    def head_effects(self, rho: torch.Tensor) -> torch.Tensor:
        """Each head's direct effect along the read-out directions rho [rows, d]: [layers, heads, rows],
        without building the per-head vectors (z_h · (W_O^h Pᵀρ))."""
        out = []
        for i in range(self.attn.shape[0]):
            r = rho if self.attn_post[i] is None else adjoint(self.attn_post[i], rho)
            zw = self.head_z[i] * (r @ self.out_proj[i].to(r.dtype).T)  # [rows, H * dh]
            out.append(zw.reshape(zw.shape[0], self.n_heads, -1).sum(-1).T)
        return torch.stack(out)

    def neuron_effects(self, rho: torch.Tensor) -> torch.Tensor:
        """Each neuron's direct effect along rho [rows, d]: [layers, d_ff, rows] (blocks of equal width)."""
        out = []
        for i, down in enumerate(self.down):
            r = rho if self.mlp_post[i] is None else adjoint(self.mlp_post[i], rho)
            out.append((self.neuron_acts[i] * (r @ down.to(r.dtype).T)).T)
        return torch.stack(out)


def adjoint(post: Frozen, rho: torch.Tensor) -> torch.Tensor:
    """Pᵀρ for the frozen norm P(c) = gain ⊙ centre(c): centre(gain ⊙ ρ) (centring is a symmetric projection)."""
    r = rho * post.gain
    return r - r.mean(-1, keepdim=True) if post.centred else r


class ComponentCapture:
    """Read-only hooks on every block's attention, MLP and projections.

    heads / neurons: also keep the output projections' inputs / the MLP activations. `run` does one
    forward; inside `with capture:` any forward of the model (another capture's, say) is recorded,
    and `collect(mask)` turns it into Components."""

    def __init__(self, lm: LensModel, *, heads: bool = True, neurons: bool = False, parts: dict | None = None,
                 sources=()):
        self.lm, self.heads, self.neurons = lm, heads or bool(sources), neurons
        heads = self.heads
        self.source_layers = sorted({int(layer) for layer, _ in sources})
        self.parts = block_parts(lm, parts, heads=heads, neurons=neurons)
        self.n_heads = n_heads(lm) if heads else None
        self.post = [(None if p.attn_post_norm is None else final_norm_from_module(p.attn_post_norm, lm.d_model),
                      None if p.mlp_post_norm is None else final_norm_from_module(p.mlp_post_norm, lm.d_model))
                     for p in self.parts]
        if heads:
            for i, p in enumerate(self.parts):
                width = projection_weight(p.attn_out)[0].shape[0]
                if width % self.n_heads:
                    raise AdapterError(f"block {i}: the attention output projection reads {width} features, not a "
                                       f"multiple of {self.n_heads} heads")
        self._handles: list = []
        self.store: dict[tuple, torch.Tensor] = {}
        self.values, self._eager = {}, None
        for i in self.source_layers:
            self.values[i] = value_projection(lm, i)
        if self.source_layers:
            self.n_kv = n_kv_heads(lm, self.n_heads)

    def __enter__(self):
        store, self.store = {}, {}
        self.store = store

        def keep_output(key):
            return lambda _m, _a, out: store.__setitem__(key, first_tensor(out).detach())

        def keep_input(key):
            return lambda _m, args, kwargs=None: store.__setitem__(
                key, (args[0] if args else kwargs["hidden_states"]).detach())

        blocks = self.lm.layers
        self._handles.append(blocks[0].register_forward_pre_hook(keep_input(("embed",)), with_kwargs=True))
        self._handles.append(blocks[-1].register_forward_hook(keep_output(("final",))))
        for i, p in enumerate(self.parts):
            self._handles.append(p.added("attn").register_forward_hook(keep_output(("attn", i))))
            self._handles.append(p.added("mlp").register_forward_hook(keep_output(("mlp", i))))
            if p.attn_post_norm is not None:
                self._handles.append(p.attn_post_norm.register_forward_pre_hook(keep_input(("attn_pre", i))))
            if p.mlp_post_norm is not None:
                self._handles.append(p.mlp_post_norm.register_forward_pre_hook(keep_input(("mlp_pre", i))))
            if self.heads:
                self._handles.append(p.attn_out.register_forward_pre_hook(keep_input(("z", i))))
            if self.neurons:
                self._handles.append(p.mlp_down.register_forward_pre_hook(keep_input(("act", i))))
        for i in self.source_layers:
            def keep_weights(_m, _a, out, i=i):
                w = out[1] if isinstance(out, tuple) and len(out) > 1 else None
                if w is None:
                    raise RuntimeError(f"block {i}: the attention returned no weights (eager attention is needed)")
                store[("weights", i)] = w.detach()
            self._handles.append(self.parts[i].attn.register_forward_hook(keep_weights))
            self._handles.append(self.values[i][0].register_forward_hook(keep_output(("values", i))))
        self._eager = None
        if self.source_layers and getattr(self.lm.model.config, "_attn_implementation", "eager") != "eager":
            self._eager = self.lm.model.config._attn_implementation  # attention weights need the eager path
            self.lm.model.set_attn_implementation("eager")
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._eager is not None:
            self.lm.model.set_attn_implementation(self._eager)
            self._eager = None
        return False

    @torch.no_grad()
    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """One forward of a batch [batch, seq] (or [seq]) → (Components, the capture's Residuals: ids, targets,
        batch_index, position of the rows)."""
        input_ids, mask = check_batch(input_ids, attention_mask, self.lm.vocab_size)
        runner = ResidualCapture(self.lm, layers=[self.lm.n_layers - 1], embed=False, keep=False)
        with self:
            res = runner.run(input_ids, mask.long())
        return self.collect(runner.forward_mask), res  # the forward's columns: a BOS in front is not a row

    def collect(self, mask: torch.Tensor) -> Components:
        """The recorded forward's parts at the real positions of mask [batch, seq] (bool)."""
        store = self.store

        def rows(t: torch.Tensor) -> torch.Tensor:  # OPT's fc2 sees [batch * seq, d]
            return t.reshape(*mask.shape, t.shape[-1])[mask.to(t.device)]

        L = self.lm.n_layers
        out = Components(embed=rows(store[("embed",)]), final=rows(store[("final",)]),
                         attn=torch.stack([rows(store[("attn", i)]) for i in range(L)]),
                         mlp=torch.stack([rows(store[("mlp", i)]) for i in range(L)]))
        frozen = [(None if a is None else Frozen.of(a, rows(store[("attn_pre", i)])),
                   None if m is None else Frozen.of(m, rows(store[("mlp_pre", i)])))
                  for i, (a, m) in enumerate(self.post)]
        if self.heads:
            out.n_heads, out.attn_post = self.n_heads, [f[0] for f in frozen]
            out.head_z = torch.stack([rows(store[("z", i)]) for i in range(L)])
            weights = [projection_weight(p.attn_out) for p in self.parts]
            out.out_proj = [w for w, _ in weights]
            out.attn_bias = torch.stack([_bias_rows(b, out.head_z.shape[1], out.attn, f[0])
                                         for (_, b), f in zip(weights, frozen)])
        if self.neurons:
            out.neuron_acts = torch.stack([rows(store[("act", i)]) for i in range(L)])
            weights = [projection_weight(p.mlp_down) for p in self.parts]
            out.down, out.mlp_post = [w for w, _ in weights], [f[1] for f in frozen]
            out.mlp_bias = torch.stack([_bias_rows(b, out.neuron_acts.shape[1], out.mlp, f[1])
                                        for (_, b), f in zip(weights, frozen)])
        if self.source_layers:
            out.sources, out.mask = {}, mask
            for i in self.source_layers:
                weights = store[("weights", i)]
                d_head = out.head_z.shape[-1] // self.n_heads
                v = value_heads(self.values[i][1], store[("values", i)], self.n_heads, self.n_kv, d_head)
                v = v.reshape(*mask.shape, *v.shape[-2:]).repeat_interleave(self.n_heads // self.n_kv, dim=-2)
                out.sources[i] = (weights, v)
        self.store = {}
        return out


def _bias_rows(bias, n_rows: int, like: torch.Tensor, post: Frozen | None) -> torch.Tensor:
    """A projection's bias as added to the residual at each row (through the post-norm; zeros without a bias)."""
    if bias is None:
        return torch.zeros(n_rows, like.shape[-1], dtype=like.dtype, device=like.device)
    b = bias.to(like.dtype).expand(n_rows, -1)
    return b if post is None else post(b)
