"""The parity sweep with the torch twin on a GPU (TF32 off): the same tolerances as on the CPU.

Skipped where torch sees no GPU (the development machine and CI have none); run it where one is:
``pytest parity_tests/test_gpu.py``, or ``python demo.py parity --device cuda`` for the table.
"""

import pytest
import torch

from foundation.contract.agreement import TOL
from tours.parity import sweep, use_device

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no GPU here")


@needs_gpu
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_configuration_agrees_with_the_twin_on_the_gpu(dtype):
    device = use_device("cuda")
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    worst = sweep(seed=0, device=device, dtypes=(dtype,), progress_bar=lambda jobs, label: jobs)
    assert len(worst) == 3, f"one row per normalization, got {sorted(worst)}"
    for (_, norm), (out_err, grad_err) in worst.items():
        assert out_err <= TOL[dtype], f"{dtype} {norm}: output {out_err:.1e}"
        assert grad_err <= TOL[dtype], f"{dtype} {norm}: gradient {grad_err:.1e}"


@needs_gpu
def test_the_twin_moved_to_the_gpu_runs_hooks_caches_and_generates_as_on_the_cpu():
    import numpy as np

    import numpy_impl as npi
    import torch_impl as pti
    from foundation.contract.agreement import rel_err
    from gradcheck.factory import randomize_parameters
    from parity_tests.helpers import make_cfg

    use_device("cuda")
    cfg = make_cfg(d_mlp=16)
    model = randomize_parameters(npi.Transformer(cfg, seed=0), 1)
    twin = pti.Transformer.from_twin(model).to("cuda")
    assert twin.device.type == "cuda"
    tokens = np.random.default_rng(2).integers(0, cfg.d_vocab, (3, cfg.n_ctx))
    dout = np.random.default_rng(3).standard_normal((3, cfg.n_ctx, cfg.d_vocab))
    logits, cache = model.run_with_cache(tokens, incl_bwd=True, dout=dout)
    # tokens stay an ndarray and dout a CPU array: the twin moves both to its device
    logits_t, cache_t = twin.run_with_cache(tokens, incl_bwd=True, dout=torch.from_numpy(dout))
    assert logits_t.device.type == "cuda"
    assert rel_err(logits, logits_t) <= TOL["float64"]
    assert set(cache.keys()) == set(cache_t.keys())
    for name in cache.keys():
        ours, theirs = np.asarray(cache[name]), cache_t[name].cpu().numpy()
        masked = np.isneginf(ours)  # attention scores of masked keys: -inf on both sides
        assert np.array_equal(masked, np.isneginf(theirs)), name
        assert rel_err(ours[~masked], theirs[~masked]) <= TOL["float64"], name
    prompt = tokens[:, :2]
    # tokens as a list, moved to the GPU
    greedy_t = twin.generate(prompt.tolist(), max_new_tokens=4, do_sample=False)
    assert np.array_equal(
        model.generate(prompt, max_new_tokens=4, do_sample=False), greedy_t.cpu().numpy()
    )
