"""Training: NumPy and torch step for step, tied embeddings included, and the induction experiment's
promises.

Parity tolerance: in float64 the training loss at every step and the final
weights agree to 1e-9 relative. Both sides do the same arithmetic in a different order, so
what we see is rounding, about 1e-15; the looser bound leaves room for rounding to grow
over many steps, while any real difference in a gradient, the optimiser or the schedule
shows up at 1e-3 or more within a few steps.
"""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

import numpy_impl
import numpy_impl as npi
import torch_impl as pti
from foundation.contract.agreement import rel_err
from numpy_impl import TransformerConfig
from parity_tests.helpers import randomize
from training.data import batches, induction_batch
from training.induction import INDUCTION_CONFIG, run_induction
from training.parity import train_twins
from training.trainer import NumpyStepper, TorchStepper, TrainConfig, train

TOL = 1e-9
MLP_CONFIG = TransformerConfig(
    d_vocab=40,
    d_model=24,
    n_heads=3,
    n_layers=2,
    n_ctx=48,
    d_mlp=48,
    act_fn="gelu_new",
    normalization="post",
    positional="sinusoidal",
)

# the first runs by default; the others under pytest -m slow (test_optim checks every optimizer's
# step by default)
CASES = [
    # (id, model config, training config, marks)
    (
        "adam warm-up, induction model",
        replace(INDUCTION_CONFIG, dtype="float64"),
        # 15 steps: the loss already falls by 0.16 (the check asks 0.05); 200 steps under slow
        TrainConfig(steps=15, batch_size=8, lr=1e-2, warmup_steps=5),
        (),
    ),
    (
        "adamw cosine clipped",
        replace(INDUCTION_CONFIG, dtype="float64"),
        TrainConfig(
            steps=30,
            batch_size=8,
            lr=2e-2,
            warmup_steps=5,
            decay="cosine",
            optimizer="adamw",
            weight_decay=0.1,
            max_grad_norm=0.5,
            data_seed=3,
        ),
        pytest.mark.slow,
    ),
    (
        "sgd momentum clipped, MLP post-norm model",
        MLP_CONFIG,
        TrainConfig(
            steps=30,
            batch_size=8,
            lr=0.1,
            warmup_steps=5,
            optimizer="sgd",
            momentum=0.9,
            max_grad_norm=1.0,
            data_seed=4,
        ),
        pytest.mark.slow,
    ),
]


def check_parity(result):
    worst = float(np.max(result.loss_gaps))
    assert worst <= TOL, f"loss gap {worst:.2e} at step {result.worst_loss_step} > {TOL:.0e}"
    name = max(result.weight_gaps, key=result.weight_gaps.get)
    assert result.weight_gaps[name] <= TOL, (
        f"final weights: {name} off by {result.weight_gaps[name]:.2e}"
    )
    # Training did something: parity of two runs that never moved would prove nothing.
    loss = np.array(result.numpy_history.loss)
    assert loss[-5:].mean() < loss[:5].mean() - 0.05
    return worst


@pytest.mark.parametrize(
    "cfg,train_cfg", [pytest.param(*c[1:3], id=c[0], marks=c[3]) for c in CASES]
)
def test_training_parity_float64(cfg, train_cfg):
    check_parity(train_twins(cfg, train_cfg, seed=1))


@pytest.mark.slow
def test_training_parity_200_steps_induction_recipe():
    """The reference run: the induction model and recipe (Adam, warm-up 100), 200 steps, batch
    32."""
    train_cfg = TrainConfig(steps=200, batch_size=32, lr=1e-2, warmup_steps=100)
    check_parity(train_twins(replace(INDUCTION_CONFIG, dtype="float64"), train_cfg, seed=0))


def test_float32_training_stays_float32():
    """A float32 model trains in float32: no silent upcast to float64 anywhere in a step."""
    model = numpy_impl.Transformer(INDUCTION_CONFIG, seed=0)
    stepper = NumpyStepper(model, TrainConfig(steps=2, warmup_steps=1))
    seen = set()
    for _, module in model.named_modules():
        if isinstance(module, numpy_impl.HookPoint) and module.name not in (
            "embed.hook_in",
            "pos_embed.hook_in",
        ):
            # every activation but the token and position ids
            module.add_hook(lambda x, hook: seen.add(x.dtype))
            module.add_hook(lambda dx, hook: seen.add(dx.dtype), dir="bwd")
    batch = induction_batch(
        np.random.default_rng(0), 4, INDUCTION_CONFIG.n_ctx + 1, INDUCTION_CONFIG.d_vocab
    )
    stepper.step(batch)
    assert seen == {np.dtype("float32")}
    assert {p.data.dtype for p in model.parameters()} == {np.dtype("float32")}


# the default run's training test is the parity above, which asserts the loss falls too
@pytest.mark.slow
def test_induction_training_loss_falls():
    """A short run of the experiment (200 of its 2000 steps): the loss must already fall clearly."""
    result = run_induction(seed=0, out_dir=None, steps=200, progress=False)
    loss = np.array(result.history.loss)
    # At step 0 the loss is about ln 128 = 4.85 plus the random init's overconfidence; by
    # step 200 (seen: about 4.3) the model has learned a first part of copying.
    assert loss[-20:].mean() < loss[:20].mean() - 0.4
    assert (
        result.history.evals["held-out"]["repeated"][-1]
        < result.history.evals["held-out"]["repeated"][0] - 0.5
    )


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_induction_heads_form_and_generalise(seed, tmp_path):
    """Induction, on held-out data of a shape never trained on (segments of 21..24 tokens, copied
    21..24 places back)."""
    result = run_induction(seed=seed, out_dir=str(tmp_path), progress=False)
    chance = math.log(INDUCTION_CONFIG.d_vocab)
    assert result.repeated_loss <= 0.5, f"repeated-token loss {result.repeated_loss:.3f} > 0.5 nats"
    # First occurrences are unpredictable: the loss stays near chance (a little above it,
    # as the model bets on copies), and certainly no lower (that would mean a leak).
    assert chance - 0.1 <= result.first_loss <= chance + 0.75, (
        f"first-occurrence loss {result.first_loss:.3f}"
    )
    assert result.prev_token_scores[0].max() >= 0.4, result.prev_token_scores
    assert result.induction_scores[1].max() >= 0.4, result.induction_scores
    # The weights file it wrote loads into both twins and gives the same logits.
    import torch

    import torch_impl

    loaded, twin = (
        numpy_impl.Transformer.load(result.files["weights"]),
        torch_impl.Transformer.load(result.files["weights"]),
    )
    tokens = np.arange(48)[None] % INDUCTION_CONFIG.d_vocab
    with torch.no_grad():
        gap = np.abs(loaded.forward(tokens) - twin(torch.from_numpy(tokens)).numpy()).max()
    assert gap <= 1e-4


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(steps=0), "steps"),
        (dict(batch_size=-1), "batch_size"),
        (dict(optimizer="lion"), "optimizer"),
        (dict(max_grad_norm=0.0), "max_grad_norm"),
        (dict(decay="linear"), "decay"),
        (dict(steps=10, warmup_steps=10, decay="cosine"), "total_steps"),
        (dict(lr=-1.0), "lr"),
    ],
)
def test_bad_train_config_names_the_field(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        cfg = TrainConfig(**kwargs)
        NumpyStepper(numpy_impl.Transformer(INDUCTION_CONFIG), cfg)


def test_steppers_and_train_check_their_arguments():
    with pytest.raises(TypeError, match="model"):
        NumpyStepper("not a model", TrainConfig())
    with pytest.raises(TypeError, match="model"):
        TorchStepper(numpy_impl.Transformer(INDUCTION_CONFIG), TrainConfig())
    stepper = NumpyStepper(
        numpy_impl.Transformer(INDUCTION_CONFIG), TrainConfig(steps=3, warmup_steps=1)
    )
    with pytest.raises(TypeError, match="train_cfg"):
        train(stepper, {"steps": 3}, 49, 128)
    with pytest.raises(ValueError, match="eval_every"):
        train(stepper, TrainConfig(steps=3, warmup_steps=1), 49, 128, eval_every=0)
    with pytest.raises(ValueError, match="seed"):
        run_induction(seed=-1, out_dir=None)


# ================================================================ tied embeddings
#
# TrainConfig(tie_embeddings=True): one matrix, as GPT-2 trains it. The twins keep unembed.W_U
# separate; tied, the steppers add W_U's gradient (transposed) into W_E's, update W_E only, and copy
# W_E.T into W_U after each step; b_U (GPT-2 has none) stays. Checked three ways: W_U stays exactly
# W_E.T in both twins; one plain SGD step moves W_E by exactly -lr * (W_E.grad + W_U.grad.T); and a
# loaded GPT-2 trained a few steps here ends with the same weights as transformers' GPT2LMHeadModel
# trained by torch.optim on the same batches.


TIED_CFG = npi.TransformerConfig(d_vocab=30, d_model=16, n_heads=2, n_layers=2, n_ctx=24, d_mlp=32)


DATA = dict(seq_len=25, min_len=3, max_len=8)  # inputs are the first 24 tokens


def tied_model(seed=0):
    """A NumPy model with random weights whose W_U is W_E.T and whose b_U is not zero."""
    model = npi.Transformer(TIED_CFG, seed=seed)
    randomize(model, seed + 1)
    model.unembed.W_U.data[...] = model.embed.W_E.data.T
    return model


def stream(train_cfg, d_vocab):
    return batches(
        train_cfg.data_seed, train_cfg.steps, train_cfg.batch_size, d_vocab=d_vocab, **DATA
    )


def test_both_twins_stay_tied_and_agree():
    train_cfg = TrainConfig(
        steps=6, batch_size=4, lr=1e-2, warmup_steps=2, tie_embeddings=True, max_grad_norm=1.0
    )
    model = tied_model()
    b_U = model.unembed.b_U.data.copy()
    steppers = [
        NumpyStepper(model, train_cfg),
        TorchStepper(pti.Transformer.from_twin(model), train_cfg),
    ]
    for batch in stream(train_cfg, TIED_CFG.d_vocab):
        losses = [stepper.step(batch) for stepper in steppers]
        assert abs(losses[0] - losses[1]) <= TOL * abs(losses[1])
        for stepper in steppers:
            state = stepper.state_dict()
            assert np.array_equal(state["unembed.W_U"], state["embed.W_E"].T)
            assert np.array_equal(state["unembed.b_U"], b_U)
    numpy_state, torch_state = (stepper.state_dict() for stepper in steppers)
    assert max(rel_err(numpy_state[name], torch_state[name]) for name in numpy_state) <= TOL
    # training moved it
    assert rel_err(numpy_state["embed.W_E"], tied_model().embed.W_E.data) > 1e-4


@pytest.mark.parametrize("twin", ["numpy", "torch"])
def test_one_sgd_step_follows_the_tied_gradient(twin):
    """W_E after one plain SGD step = W_E - lr * (W_E.grad + W_U.grad.T), the gradients from an
    untied backward."""
    lr = 0.5
    train_cfg = TrainConfig(
        steps=1,
        batch_size=4,
        lr=lr,
        warmup_steps=0,
        optimizer="sgd",
        momentum=0.0,
        tie_embeddings=True,
    )
    batch = next(stream(train_cfg, TIED_CFG.d_vocab))
    reference = tied_model()
    loss_fn = npi.CrossEntropyLoss()
    loss_fn.forward(reference(batch.inputs), batch.targets, batch.weights.astype(TIED_CFG.dtype))
    reference.backward(loss_fn.backward())
    expected = reference.embed.W_E.data - lr * (
        reference.embed.W_E.grad + reference.unembed.W_U.grad.T
    )
    model = tied_model() if twin == "numpy" else pti.Transformer.from_twin(tied_model())
    stepper = (NumpyStepper if twin == "numpy" else TorchStepper)(model, train_cfg)
    stepper.step(batch)
    state = stepper.state_dict()
    assert rel_err(state["embed.W_E"], expected) <= 1e-12
    assert np.array_equal(state["unembed.W_U"], state["embed.W_E"].T)


def test_an_untied_model_is_refused():
    train_cfg = TrainConfig(steps=1, tie_embeddings=True)
    model = npi.Transformer(TIED_CFG, seed=0)  # W_U drawn on its own
    for stepper, m in ((NumpyStepper, model), (TorchStepper, pti.Transformer.from_twin(model))):
        with pytest.raises(ValueError, match="W_U is not embed.W_E.T"):
            stepper(m, train_cfg)
    with pytest.raises(TypeError, match="tie_embeddings"):
        TrainConfig(tie_embeddings="yes")


def test_training_a_loaded_gpt2_matches_transformers(tmp_path):
    """A few SGD steps on a loaded GPT-2: both twins end where GPT2LMHeadModel, trained by
    torch.optim, ends."""
    from foundation.files.pretrained import gpt2_state_dict
    from parity_tests.gpt2_checkpoints import D_VOCAB, make_checkpoint

    hf = make_checkpoint(tmp_path, tokenizer=False)
    hf.train()  # train mode: GPT-2's dropout would act here, so it is off (the twins have none)
    for module in hf.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    train_cfg = TrainConfig(
        steps=4,
        batch_size=3,
        lr=0.05,
        warmup_steps=2,
        optimizer="sgd",
        momentum=0.9,
        max_grad_norm=2.0,
        tie_embeddings=True,
    )
    steppers = [
        NumpyStepper(npi.Transformer.from_pretrained(tmp_path), train_cfg),
        TorchStepper(pti.Transformer.from_pretrained(tmp_path), train_cfg),
    ]
    optimizer = torch.optim.SGD(
        hf.parameters(), lr=train_cfg.lr, momentum=train_cfg.momentum, foreach=False
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, train_cfg.lr_factor())
    loss_fn = pti.CrossEntropyLoss()
    for batch in stream(train_cfg, D_VOCAB):
        for stepper in steppers:
            stepper.step(batch)
        optimizer.zero_grad()
        logits = hf(torch.from_numpy(batch.inputs)).logits
        loss_fn(logits, torch.from_numpy(batch.targets), torch.from_numpy(batch.weights)).backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), train_cfg.max_grad_norm, foreach=False)
        optimizer.step()
        schedule.step()
    tensors = {
        name.removeprefix("transformer."): p.detach().numpy() for name, p in hf.named_parameters()
    }
    # b_U: zeros, as GPT-2 has none
    expected = gpt2_state_dict(tensors, steppers[0].model.cfg, tied=True)
    for stepper in steppers:
        state = stepper.state_dict()
        errors = {name: rel_err(state[name], expected[name]) for name in expected}
        worst = max(errors, key=errors.get)
        assert errors[worst] <= TOL, f"{type(stepper).__name__} {worst}: {errors[worst]:.2e}"
    moved = rel_err(
        steppers[0].state_dict()["embed.W_E"],
        npi.Transformer.from_pretrained(tmp_path).embed.W_E.data,
    )
    assert moved > 1e-4  # the steps did something
