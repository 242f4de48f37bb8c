"""Tiny random-initialised HF causal LMs, one per supported architecture family.

Every norm's weight/bias is perturbed after construction: default inits (ones,
zeros, Gemma's zero weight) would hide a wrong formula or a missed offset.
"""
from __future__ import annotations

import torch
from torch import nn

ARCHS = ("gpt2", "gpt_neox", "llama", "mistral", "qwen2", "gemma2", "gemma3", "phi3", "opt")
VOCAB = 211  # odd, so no accidental tile alignment
D, LAYERS, HEADS = 48, 3, 4

# Expected adapter results: (norm kind, weight_offset, tied unembedding).
EXPECTED = {
    "gpt2": ("layernorm", 0.0, True),
    "gpt_neox": ("layernorm", 0.0, False),
    "llama": ("rmsnorm", 0.0, False),
    "mistral": ("rmsnorm", 0.0, True),
    "qwen2": ("rmsnorm", 0.0, True),
    "gemma2": ("rmsnorm", 1.0, True),
    "gemma3": ("rmsnorm", 1.0, True),
    "phi3": ("rmsnorm", 0.0, False),
    "opt": ("layernorm", 0.0, True),
}
GEMMA_SOFTCAP = 1.0  # random logits reach ~3 here, so tanh visibly bends them
INIT_STD = 0.1  # HF default 0.02 gives logits ~0.1: too flat for norm/softcap mistakes to show


def _config(arch: str, **overrides):
    import transformers as tf

    ids = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)  # inside the tiny vocab
    common = dict(**ids, vocab_size=VOCAB, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  intermediate_size=2 * D, max_position_embeddings=128, tie_word_embeddings=EXPECTED[arch][2])
    llama_like = dict(common, num_key_value_heads=2, rms_norm_eps=1e-5)
    if arch == "gpt2":
        cfg = tf.GPT2Config(vocab_size=VOCAB, n_embd=D, n_layer=LAYERS, n_head=HEADS, n_positions=128, **ids,
                            tie_word_embeddings=True, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    elif arch == "gpt_neox":
        # Sequential residual so the model has a mid-layer site; parallel is tested separately.
        cfg = tf.GPTNeoXConfig(**common, use_parallel_residual=False, rotary_pct=0.5)
    elif arch == "llama":
        cfg = tf.LlamaConfig(**llama_like)
    elif arch == "mistral":
        cfg = tf.MistralConfig(**llama_like, sliding_window=None)
    elif arch == "qwen2":
        cfg = tf.Qwen2Config(**llama_like)
    elif arch == "gemma2":
        cfg = tf.Gemma2Config(**llama_like, head_dim=D // HEADS, final_logit_softcapping=GEMMA_SOFTCAP,
                              attn_logit_softcapping=50.0, query_pre_attn_scalar=D // HEADS, sliding_window=4)
    elif arch == "gemma3":
        # Gemma 3: QK-norm, pre- and post-norms, embeddings scaled by √d, sliding and global layers, no
        # final soft-cap (as Gemma 3 270M); a window of 4 so that sliding layers cut real sequences here.
        cfg = tf.Gemma3TextConfig(**llama_like, head_dim=D // HEADS, query_pre_attn_scalar=D // HEADS,
                                  sliding_window=4, final_logit_softcapping=None, attn_logit_softcapping=None,
                                  layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                                  architectures=["Gemma3ForCausalLM"])  # as the real config names it
    elif arch == "phi3":
        cfg = tf.Phi3Config(**llama_like)
    elif arch == "opt":
        cfg = tf.OPTConfig(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                           ffn_dim=2 * D, max_position_embeddings=128, word_embed_proj_dim=D,
                           do_layer_norm_before=True, tie_word_embeddings=True, dropout=0.0, **ids)
    else:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    cfg.initializer_range = cfg.init_std = INIT_STD  # OPT reads init_std
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def perturb_norms(model: nn.Module, scale: float = 0.2) -> None:
    """Add noise to every norm's affine parameters (in place)."""
    with torch.no_grad():
        for m in model.modules():
            if "norm" in type(m).__name__.lower():
                for p in (getattr(m, "weight", None), getattr(m, "bias", None)):
                    if isinstance(p, torch.Tensor):
                        p.add_(torch.randn_like(p) * scale)


def tiny_model(arch: str, *, seed: int = 0, lm_head_bias: bool = False, **config_overrides) -> nn.Module:
    """A float32, eval-mode, eager-attention causal LM for `arch`, with perturbed norms.

    lm_head_bias=True swaps the head for an untied nn.Linear with a random bias
    (no HF arch here has one natively) so the adapter's bias path is exercised.
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = _config(arch, **config_overrides)
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    perturb_norms(model)
    if lm_head_bias:
        old = model.get_output_embeddings()
        head = nn.Linear(old.in_features, old.out_features, bias=True)
        with torch.no_grad():
            head.weight.copy_(old.weight + 0.05 * torch.randn_like(old.weight))
            head.bias.normal_(0, 0.5)
        model.config.tie_word_embeddings = False
        model.set_output_embeddings(head)
    return model.float().eval()


def random_batch(batch: int = 2, seq: int = 7, vocab: int = VOCAB) -> torch.Tensor:
    """Fresh random ids each call (no fixed seed: inputs vary from run to run)."""
    return torch.randint(0, vocab, (batch, seq))


def tiny_tokenizer():
    """A character-level HF fast tokenizer whose 100 ids fit the tiny vocab (one token per character)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}  # pad/bos/eos as in the tiny configs
    for ch in [chr(c) for c in range(32, 127)] + ["\n"]:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r".|\n"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
