"""Write hooks: replace, add to, scale or transform hidden states of chosen sites, rows and positions.

Sites: `embed` (the first block's input), `resid.i` (block i's output), `mid.i` (the residual
between block i's attention and MLP), `attn.i` / `mlp.i` (their outputs as added to the residual,
after any post-norm), `head.i.h` (head h's slice of the attention output projection's input,
[d_head]), `neuron.i.n` (input n of the MLP's down projection, [1]), `q.i.h` (query head h) and
`k.i.h` / `v.i.h` (key/value head h) as the attention function receives them (after any rotary
embedding and QK-norm; core.attention_tap), [d_head]. An `Edit` names a site, the batch rows and positions it applies to and what it does;
every edit of a site is applied by one hook as the forward passes, so a grid of interventions,
one per batch row, is one batched forward. `mid.i` is written through the attention output: the
hook adds f(mid) − mid to it, so the residual and the MLP's input both see f(mid) (and an edit
that changes nothing adds an exact zero). Capture hooks registered alongside read the edited
states, so reading and writing compose in one forward.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
import torch

from ..core.models import LensModel
from ..core.attention_tap import AttentionTap
from ..core.structure import block_parts, first_tensor, mid_norm_name, n_heads, n_kv_heads, with_first

OPS = ("replace", "add", "scale", "apply", "knockout")
_SITE = re.compile(r"^(embed|resid|mid|attn|mlp|head|neuron|q|k|v)(?:\.(\d+))?(?:\.(\d+))?$")


@dataclass
class Edit:
    """One intervention. rows / positions: batch rows and sequence positions (None: all). value: for
    "replace" and "add" a tensor broadcastable to [len(rows), len(positions), width] (width = d_model,
    d_head for heads); for "scale" a number or such a tensor; for "apply" a function of that block of
    states returning one of the same shape. "knockout" (site attn.i only): value is a list of key
    positions that the query `positions` may not attend to in that block (attention knockout; the
    model runs its eager attention while an Intervention holds one)."""

    site: str
    op: str
    value: object
    rows: list[int] | None = None
    positions: list[int] | None = None


def parse_site(site: str, lm: LensModel, heads: int | None = None) -> tuple[str, int | None, int | None]:
    """site name → (kind, layer, head), checked against the model (a one-line error otherwise)."""
    m = _SITE.match(site) if isinstance(site, str) else None
    if m is None:
        raise ValueError(f"site: unknown {site!r}; expected embed, resid.i, mid.i, attn.i, mlp.i, head.i.h, "
                         "neuron.i.n, q.i.h, k.i.h or v.i.h")
    kind, layer, head = m.group(1), m.group(2), m.group(3)
    wants = {"embed": 0, "resid": 1, "mid": 1, "attn": 1, "mlp": 1}.get(kind, 2)
    if (layer is not None) + (head is not None) != wants:
        raise ValueError(f"site: {site!r} needs {wants} index(es) after {kind!r}")
    if layer is not None and not int(layer) < lm.n_layers:
        raise ValueError(f"site: {site!r}: layer {layer} out of range [0, {lm.n_layers})")
    if head is not None and kind in ("head", "q", "k", "v"):
        heads = heads or n_heads(lm)
        heads = n_kv_heads(lm, heads) if kind in ("k", "v") else heads
        if not int(head) < heads:
            raise ValueError(f"site: {site!r}: head {head} out of range [0, {heads})")
    return kind, None if layer is None else int(layer), None if head is None else int(head)


def _apply(edit: Edit, block: torch.Tensor) -> torch.Tensor:
    """The edited version of block [rows, positions, width]."""
    if edit.op == "apply":
        out = edit.value(block)
        if not isinstance(out, torch.Tensor) or out.shape != block.shape:
            raise ValueError(f"{edit.site}: the function returned "
                             f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}, "
                             f"expected shape {tuple(block.shape)}")
        return out.to(block.dtype)
    value = edit.value if not isinstance(edit.value, torch.Tensor) else edit.value.to(block.device, block.dtype)
    if edit.op == "replace":
        return torch.broadcast_to(value, block.shape).clone()
    if edit.op == "add":
        return block + value
    return block * value


class Intervention:
    """A context over a LensModel that applies `edits` to every forward run inside it."""

    def __init__(self, lm: LensModel, edits: list[Edit]):
        if not isinstance(lm, LensModel):
            raise ValueError(f"lm: expected a LensModel, got {type(lm).__name__}")
        self.lm, self.edits = lm, list(edits)
        need_parts = any(e.site.split(".")[0] in ("attn", "mlp", "head", "mid", "neuron") for e in self.edits)
        want_heads = any(e.site.split(".")[0] in ("head", "q", "k", "v") for e in self.edits)
        self.parts = block_parts(lm, heads=want_heads, neurons=any(e.site.startswith("neuron.") for e in self.edits)) \
            if need_parts else None
        self.n_heads = n_heads(lm) if want_heads else None
        self.by_site: dict[str, list[Edit]] = {}
        for e in self.edits:
            if not isinstance(e, Edit):
                raise ValueError(f"edits: expected Edit objects, got {type(e).__name__}")
            if e.op not in OPS:
                raise ValueError(f"{e.site}: op {e.op!r} is not one of {OPS}")
            if e.op == "apply" and not callable(e.value):
                raise ValueError(f"{e.site}: op 'apply' needs a function")
            kind, layer, _ = parse_site(e.site, lm, self.n_heads)
            if e.op == "knockout" and kind != "attn":
                raise ValueError(f"{e.site}: knockout edits attention edges: its site is attn.i")
            if kind == "mid":
                mid_norm_name(lm.layers[layer])  # parallel-residual or post-LN blocks have no mid residual
            self.by_site.setdefault(e.site, []).append(e)
        self._handles: list = []
        self._qkv_sites: list = []  # (site, kind, layer, head) of q/k/v edits, written through an AttentionTap
        self._tap = None
        self._block_input: dict[int, torch.Tensor] = {}
        self._eager = None
        self.knockouts = {s: [e for e in es if e.op == "knockout"] for s, es in self.by_site.items()}
        self.by_site = {s: [e for e in es if e.op != "knockout"] for s, es in self.by_site.items()}
        self.by_site = {s: es for s, es in self.by_site.items() if es}
        self.knockouts = {s: es for s, es in self.knockouts.items() if es}

    def _edit(self, site: str, h: torch.Tensor) -> torch.Tensor:
        """h [batch, seq, width] with every edit of `site` applied (a new tensor; h is left as it is)."""
        h = h.clone()
        for e in self.by_site[site]:
            rows = torch.arange(h.shape[0]) if e.rows is None else torch.as_tensor(e.rows)
            pos = torch.arange(h.shape[1]) if e.positions is None else torch.as_tensor(e.positions)
            if rows.numel() and (int(rows.max()) >= h.shape[0] or int(rows.min()) < 0):
                raise ValueError(f"{site}: rows {e.rows} out of range for a batch of {h.shape[0]}")
            if pos.numel() and (int(pos.max()) >= h.shape[1] or int(pos.min()) < 0):
                raise ValueError(f"{site}: positions {e.positions} out of range for {h.shape[1]} positions")
            r, p = rows.to(h.device)[:, None], pos.to(h.device)[None, :]
            h[r, p] = _apply(e, h[r, p])
        return h

    def _mask_hook(self, site: str):
        """A pre-hook on block i's attention that sets the knocked-out edges of its additive mask to -inf-ish."""
        def pre(_m, args, kwargs):
            mask = kwargs.get("attention_mask")
            if mask is None or not torch.is_tensor(mask) or mask.dim() != 4 or not mask.is_floating_point():
                raise RuntimeError(f"{site}: knockout needs the additive [batch, 1, query, key] mask of eager attention")
            mask = mask.clone()
            if mask.shape[0] == 1:
                batch = (args[0] if args else kwargs["hidden_states"]).shape[0]
                mask = mask.expand(batch, *mask.shape[1:]).clone()
            low = torch.finfo(mask.dtype).min
            for e in self.knockouts[site]:
                rows = torch.arange(mask.shape[0]) if e.rows is None else torch.as_tensor(e.rows)
                queries = torch.arange(mask.shape[2]) if e.positions is None else torch.as_tensor(e.positions)
                keys = torch.as_tensor(list(e.value), dtype=torch.long)
                if keys.numel() == 0:
                    continue
                for name, idx, n in (("positions", queries, mask.shape[2]), ("keys", keys, mask.shape[3])):
                    if idx.numel() and (int(idx.max()) >= n or int(idx.min()) < 0):
                        raise ValueError(f"{site}: knockout {name} {idx.tolist()} out of range for {n} positions")
                mask[rows[:, None, None], 0, queries[None, :, None], keys[None, None, :]] = low
            return args, {**kwargs, "attention_mask": mask}
        return pre

    def _edit_qkv(self, layer, q, k, v):
        """Rewrite the query, key or value heads of `layer` that have edits (core.attention_tap)."""
        got = {"q": q, "k": k, "v": v}
        for site, kind, i, head in self._qkv_sites:
            if i == layer:
                x = got[kind].clone()
                x[:, head] = self._edit(site, x[:, head])
                got[kind] = x
        return got["q"], got["k"], got["v"]

    def __enter__(self):
        blocks = self.lm.layers
        self._qkv_sites = []
        if self.knockouts and getattr(self.lm.model.config, "_attn_implementation", "eager") != "eager":
            self._eager = self.lm.model.config._attn_implementation  # the additive mask is eager attention's
            self.lm.model.set_attn_implementation("eager")
        for site in self.knockouts:
            _, i, _ = parse_site(site, self.lm, self.n_heads)
            self._handles.append(self.parts[i].attn.register_forward_pre_hook(self._mask_hook(site), with_kwargs=True))
        for site in self.by_site:
            kind, i, head = parse_site(site, self.lm, self.n_heads)
            if kind == "embed":
                def pre(_m, args, kwargs, site=site):
                    if args:
                        return (self._edit(site, args[0]), *args[1:]), kwargs
                    return args, {**kwargs, "hidden_states": self._edit(site, kwargs["hidden_states"])}
                self._handles.append(blocks[0].register_forward_pre_hook(pre, with_kwargs=True))
            elif kind == "resid":
                self._handles.append(blocks[i].register_forward_hook(
                    lambda _m, _a, out, site=site: with_first(out, self._edit(site, first_tensor(out)))))
            elif kind in ("attn", "mlp"):
                module = self.parts[i].added(kind)
                self._keep_block_input(i)

                def part_hook(_m, _a, out, site=site, i=i):
                    h = first_tensor(out)  # OPT's fc2 sees [batch * seq, d]
                    return with_first(out, self._edit(site, h.reshape(*self._block_input[i].shape[:-1], h.shape[-1])))
                self._handles.append(module.register_forward_hook(part_hook))
            elif kind == "head":
                def head_pre(_m, args, site=site, head=head):
                    z = args[0]
                    d_head = z.shape[-1] // self.n_heads
                    zh = z.reshape(*z.shape[:-1], self.n_heads, d_head)
                    edited = self._edit(site, zh[..., head, :])
                    zh = zh.clone()
                    zh[..., head, :] = edited
                    return (zh.reshape(z.shape), *args[1:])
                self._handles.append(self.parts[i].attn_out.register_forward_pre_hook(head_pre))
            elif kind == "neuron":
                self._keep_block_input(i)

                def neuron_pre(_m, args, site=site, i=i, n=head):
                    x = args[0]
                    h = x.reshape(*self._block_input[i].shape[:-1], x.shape[-1]).clone()
                    h[..., n:n + 1] = self._edit(site, h[..., n:n + 1])
                    return (h.reshape(x.shape), *args[1:])
                self._handles.append(self.parts[i].mlp_down.register_forward_pre_hook(neuron_pre))
            elif kind in ("q", "k", "v"):
                self._qkv_sites.append((site, kind, i, head))
            else:  # mid: through the attention output, which sees the block input
                self._keep_block_input(i)
                module = self.parts[i].added("attn")

                def mid_hook(_m, _a, out, site=site, i=i):
                    a = first_tensor(out)
                    mid = self._block_input[i] + a
                    return with_first(out, a + (self._edit(site, mid) - mid))
                self._handles.append(module.register_forward_hook(mid_hook))
        if self._qkv_sites:
            self._tap = AttentionTap(self.lm, self._edit_qkv, keep=False).__enter__()
        return self

    def _keep_block_input(self, i: int) -> None:
        if any(getattr(h, "_fusedlens_block", None) == i for h in self._handles):
            return
        handle = self.lm.layers[i].register_forward_pre_hook(
            lambda _m, args, kwargs: self._block_input.__setitem__(i, args[0] if args else kwargs["hidden_states"]),
            with_kwargs=True)
        handle._fusedlens_block = i
        self._handles.append(handle)

    def __exit__(self, *exc):
        if self._tap is not None:
            self._tap.__exit__(*exc)
            self._tap = None
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._block_input.clear()
        if self._eager is not None:
            self.lm.model.set_attn_implementation(self._eager)
            self._eager = None
        return False


def run_with(lm: LensModel, edits: list[Edit], input_ids: torch.Tensor,
             attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The model's logits [batch, seq, vocab] with the edits applied (one forward)."""
    with torch.no_grad(), Intervention(lm, edits):
        return lm.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

