"""Parity of the whole model over every configuration, with weights carried by a real .npz file.

normalization x positional x causal x attn_only x act_fn x unembed, batch 3, pos 1 and n_ctx,
in float64 and float32: the output and the gradient of every parameter must agree. The default
run takes a pairwise selection of the configurations (every two option values together at least
once); ``pytest -m slow`` runs the rest.
"""

import itertools

import numpy as np
import pytest
import torch

import numpy_impl as npi
import torch_impl as pti
from parity_tests.helpers import (
    FIELDS,
    assert_close,
    compare_grads,
    make_cfg,
    pairwise_then_slow,
    randomize,
)

N_CTX = FIELDS["n_ctx"]
# act_fn does not matter without an MLP, so attn_only runs with relu alone
CONFIGS = [
    combo
    for combo in itertools.product(
        ["pre", "post", None],  # normalization
        ["learned", "sinusoidal"],  # positional
        [True, False],  # causal
        [False, True],  # attn_only
        ["relu", "gelu_new"],  # act_fn
        [True, False],  # unembed
    )
    if not (combo[3] and combo[4] == "gelu_new")
]


def config_id(combo):
    norm, positional, causal, attn_only, act_fn, unembed = combo
    return (
        f"{norm}-{positional}-{'causal' if causal else 'bidir'}-"
        f"{'attnonly' if attn_only else 'mlp'}-{act_fn}-{'logits' if unembed else 'resid'}"
    )


# every configuration in both dtypes; a pairwise selection by default, the rest under pytest -m slow
CASES = [(combo, dtype) for dtype in ("float64", "float32") for combo in CONFIGS]


@pytest.mark.parametrize(
    "combo,dtype",
    pairwise_then_slow(
        CASES,
        ids=[f"{config_id(c)}-{d}" for c, d in CASES],
        options=lambda case: (*case[0], case[1]),
    ),
)
def test_model_parity(combo, dtype, tmp_path):
    norm, positional, causal, attn_only, act_fn, unembed = combo
    cfg = make_cfg(
        d_mlp=16,
        normalization=norm,
        positional=positional,
        causal=causal,
        attn_only=attn_only,
        act_fn=act_fn,
        unembed=unembed,
        dtype=dtype,
    )
    model = npi.Transformer(cfg, seed=0)
    randomize(model, 1)
    # the weights travel NumPy -> file -> torch, as a user would move them
    model.save(tmp_path / "w.npz")
    twin = pti.Transformer.load(tmp_path / "w.npz")
    rng = np.random.default_rng(2)
    for pos in (1, N_CTX):
        tokens = rng.integers(0, cfg.d_vocab, (3, pos))
        model.zero_grad()
        twin.zero_grad()
        out = model.forward(tokens)
        out_t = twin(torch.from_numpy(tokens))
        assert_close(f"output (pos={pos})", out, out_t, dtype)
        dout = rng.standard_normal(out.shape).astype(dtype)
        model.backward(dout)
        out_t.backward(torch.from_numpy(dout))
        compare_grads(model, twin, dtype)


def test_state_dict_names_and_shapes_match_design():
    """Keys and shapes are TransformerLens's, identical in both twins; fixed tensors are not
    saved."""
    cfg = make_cfg(d_head=5, d_mlp=16)
    expected = {
        "embed.W_E": (11, 12),
        "pos_embed.W_pos": (N_CTX, 12),
        "ln_final.w": (12,),
        "ln_final.b": (12,),
        "unembed.W_U": (12, 11),
        "unembed.b_U": (11,),
    }
    for i in range(2):
        expected.update(
            {
                f"blocks.{i}.ln1.w": (12,),
                f"blocks.{i}.ln1.b": (12,),
                f"blocks.{i}.attn.W_Q": (3, 12, 5),
                f"blocks.{i}.attn.W_K": (3, 12, 5),
                f"blocks.{i}.attn.W_V": (3, 12, 5),
                f"blocks.{i}.attn.b_Q": (3, 5),
                f"blocks.{i}.attn.b_K": (3, 5),
                f"blocks.{i}.attn.b_V": (3, 5),
                f"blocks.{i}.attn.W_O": (3, 5, 12),
                f"blocks.{i}.attn.b_O": (12,),
                f"blocks.{i}.ln2.w": (12,),
                f"blocks.{i}.ln2.b": (12,),
                f"blocks.{i}.mlp.W_in": (12, 16),
                f"blocks.{i}.mlp.b_in": (16,),
                f"blocks.{i}.mlp.W_out": (16, 12),
                f"blocks.{i}.mlp.b_out": (12,),
            }
        )
    np_shapes = {k: v.shape for k, v in npi.Transformer(cfg).state_dict().items()}
    torch_shapes = {k: tuple(v.shape) for k, v in pti.Transformer(cfg).state_dict().items()}
    assert np_shapes == expected
    assert torch_shapes == expected
    sinusoidal = make_cfg(n_layers=1, positional="sinusoidal", normalization="post", unembed=False)
    for model in (npi.Transformer(sinusoidal), pti.Transformer(sinusoidal)):
        keys = set(model.state_dict())
        assert not any(
            k.startswith(("pos_embed", "ln_final", "unembed")) or "mask" in k for k in keys
        ), keys


def test_model_accepts_lists_and_is_callable():
    cfg = make_cfg(n_layers=1)
    model = npi.Transformer(cfg)
    twin = pti.Transformer.from_twin(model)
    out = model([[1, 2, 3]])
    assert out.shape == (1, 3, 11)
    assert_close("list input", out, twin([[1, 2, 3]]), "float64")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_dtype_is_kept_everywhere(dtype):
    """A float32 model computes in float32 end to end: output, every gradient, every
    intermediate."""
    cfg = make_cfg(act_fn="gelu_new", dtype=dtype)
    model = npi.Transformer(cfg)
    seen = []
    for _name, module in model.named_modules():
        if isinstance(module, npi.HookPoint):
            module.add_hook(lambda x, hook: seen.append((hook.name, x.dtype)))
            module.add_hook(
                lambda dx, hook: seen.append((hook.name + "_grad", dx.dtype)), dir="bwd"
            )
    out = model(np.array([[1, 2, 3, 4]]))
    model.backward(np.random.default_rng(0).standard_normal(out.shape).astype(dtype))
    assert out.dtype == np.dtype(dtype)
    assert all(p.grad.dtype == np.dtype(dtype) for p in model.parameters())
    ids = ("embed.hook_in", "pos_embed.hook_in")  # token and position ids: integers
    wrong = [(name, d) for name, d in seen if d != np.dtype(dtype) and name not in ids]
    assert seen and not wrong, wrong
