"""Training with tied embeddings (TrainConfig(tie_embeddings=True)): one matrix, as GPT-2 trains it.

The twins keep unembed.W_U separate; tied, the steppers add W_U's gradient (transposed) into
W_E's, update W_E only, and copy W_E.T into W_U after each step; b_U (GPT-2 has none) stays.
Checked three ways: W_U stays exactly W_E.T in both twins; one plain SGD step moves W_E by
exactly -lr * (W_E.grad + W_U.grad.T); and a loaded GPT-2 trained a few steps here ends with
the same weights as transformers' GPT2LMHeadModel trained by torch.optim on the same batches.
"""

import numpy as np
import pytest
import torch

import numpy_impl as npi
import torch_impl as pti
from foundation.contract.agreement import rel_err
from parity_tests.helpers import randomize
from training.data import batches
from training.trainer import NumpyStepper, TorchStepper, TrainConfig

TOL = 1e-9  # training parity in float64, as parity_tests/test_training.py: rounding may grow over steps
CFG = npi.TransformerConfig(d_vocab=30, d_model=16, n_heads=2, n_layers=2, n_ctx=24, d_mlp=32)
DATA = dict(seq_len=25, min_len=3, max_len=8)  # inputs are the first 24 tokens


def tied_model(seed=0):
    """A NumPy model with random weights whose W_U is W_E.T and whose b_U is not zero."""
    model = npi.Transformer(CFG, seed=seed)
    randomize(model, seed + 1)
    model.unembed.W_U.data[...] = model.embed.W_E.data.T
    return model


def stream(train_cfg, d_vocab):
    return batches(train_cfg.data_seed, train_cfg.steps, train_cfg.batch_size, d_vocab=d_vocab, **DATA)


def test_both_twins_stay_tied_and_agree():
    train_cfg = TrainConfig(steps=6, batch_size=4, lr=1e-2, warmup_steps=2, tie_embeddings=True, max_grad_norm=1.0)
    model = tied_model()
    b_U = model.unembed.b_U.data.copy()
    steppers = [NumpyStepper(model, train_cfg), TorchStepper(pti.Transformer.from_twin(model), train_cfg)]
    for batch in stream(train_cfg, CFG.d_vocab):
        losses = [stepper.step(batch) for stepper in steppers]
        assert abs(losses[0] - losses[1]) <= TOL * abs(losses[1])
        for stepper in steppers:
            state = stepper.state_dict()
            assert np.array_equal(state["unembed.W_U"], state["embed.W_E"].T)
            assert np.array_equal(state["unembed.b_U"], b_U)
    numpy_state, torch_state = (stepper.state_dict() for stepper in steppers)
    assert max(rel_err(numpy_state[name], torch_state[name]) for name in numpy_state) <= TOL
    assert rel_err(numpy_state["embed.W_E"], tied_model().embed.W_E.data) > 1e-4  # training moved it


@pytest.mark.parametrize("twin", ["numpy", "torch"])
def test_one_sgd_step_follows_the_tied_gradient(twin):
    """W_E after one plain SGD step = W_E - lr * (W_E.grad + W_U.grad.T), the gradients from an untied backward."""
    lr = 0.5
    train_cfg = TrainConfig(steps=1, batch_size=4, lr=lr, warmup_steps=0, optimizer="sgd", momentum=0.0,
                            tie_embeddings=True)
    batch = next(stream(train_cfg, CFG.d_vocab))
    reference = tied_model()
    loss_fn = npi.CrossEntropyLoss()
    loss_fn.forward(reference(batch.inputs), batch.targets, batch.weights.astype(CFG.dtype))
    reference.backward(loss_fn.backward())
    expected = reference.embed.W_E.data - lr * (reference.embed.W_E.grad + reference.unembed.W_U.grad.T)
    model = tied_model() if twin == "numpy" else pti.Transformer.from_twin(tied_model())
    stepper = (NumpyStepper if twin == "numpy" else TorchStepper)(model, train_cfg)
    stepper.step(batch)
    state = stepper.state_dict()
    assert rel_err(state["embed.W_E"], expected) <= 1e-12
    assert np.array_equal(state["unembed.W_U"], state["embed.W_E"].T)


def test_an_untied_model_is_refused():
    train_cfg = TrainConfig(steps=1, tie_embeddings=True)
    model = npi.Transformer(CFG, seed=0)  # W_U drawn on its own
    for stepper, m in ((NumpyStepper, model), (TorchStepper, pti.Transformer.from_twin(model))):
        with pytest.raises(ValueError, match="W_U is not embed.W_E.T"):
            stepper(m, train_cfg)
    with pytest.raises(TypeError, match="tie_embeddings"):
        TrainConfig(tie_embeddings="yes")


def test_training_a_loaded_gpt2_matches_transformers(tmp_path):
    """A few SGD steps on a loaded GPT-2: both twins end where GPT2LMHeadModel, trained by torch.optim, ends."""
    from foundation.files.pretrained import gpt2_state_dict
    from parity_tests.gpt2_checkpoints import D_VOCAB, make_checkpoint

    hf = make_checkpoint(tmp_path, tokenizer=False)
    hf.train()  # train mode: GPT-2's dropout would act here, so it is off (the twins have none)
    for module in hf.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    train_cfg = TrainConfig(steps=4, batch_size=3, lr=0.05, warmup_steps=2, optimizer="sgd", momentum=0.9,
                            max_grad_norm=2.0, tie_embeddings=True)
    steppers = [NumpyStepper(npi.Transformer.from_pretrained(tmp_path), train_cfg),
                TorchStepper(pti.Transformer.from_pretrained(tmp_path), train_cfg)]
    optimizer = torch.optim.SGD(hf.parameters(), lr=train_cfg.lr, momentum=train_cfg.momentum, foreach=False)
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
    tensors = {name.removeprefix("transformer."): p.detach().numpy() for name, p in hf.named_parameters()}
    expected = gpt2_state_dict(tensors, steppers[0].model.cfg, tied=True)  # b_U: zeros, as GPT-2 has none
    for stepper in steppers:
        state = stepper.state_dict()
        errors = {name: rel_err(state[name], expected[name]) for name in expected}
        worst = max(errors, key=errors.get)
        assert errors[worst] <= TOL, f"{type(stepper).__name__} {worst}: {errors[worst]:.2e}"
    moved = rel_err(steppers[0].state_dict()["embed.W_E"], npi.Transformer.from_pretrained(tmp_path).embed.W_E.data)
    assert moved > 1e-4  # the steps did something
