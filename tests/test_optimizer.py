"""The drop-in optimizer in one process (size 1): arguments, fallbacks, the step's bookkeeping."""

from __future__ import annotations

import math
import time
import warnings

import horovod_cutoff.torch as hvd
import numpy as np
import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def horovod():
    hvd.init()
    yield


def make(cutoff="static", **kwargs):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters(),
                                           cutoff=cutoff, **kwargs)


def test_drop_in_reexports_horovod_torch():
    import horovod.torch as plain
    for name in ("init", "rank", "size", "allreduce", "broadcast_parameters", "Compression"):
        assert getattr(hvd, name) is getattr(plain, name)


def test_without_cutoff_the_optimizer_is_horovods_own():
    model = torch.nn.Linear(3, 2)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                   named_parameters=model.named_parameters())
    assert not hasattr(opt, "cutoff_stats")


def test_wrapped_optimizer_keeps_its_class_and_state_dict():
    model, opt = make("none")
    assert isinstance(opt, torch.optim.SGD)
    assert opt.state_dict()["param_groups"][0]["lr"] == 0.1
    opt.close()


@pytest.mark.parametrize("kwargs,argument", [
    ({"cutoff": "bogus"}, "cutoff"),
    ({"cutoff": 3.5}, "cutoff"),
    ({"cutoff": "static", "cutoff_options": {"seconds": -1}}, "seconds"),
    ({"cutoff": "static", "cutoff_options": {"seconds": "soon"}}, "seconds"),
    ({"cutoff": "static"}, "seconds="),
    ({"cutoff": "static", "cutoff_options": {"quantile": 1.5}}, "quantile"),
    ({"cutoff": "backup", "cutoff_options": {"backup": -1}}, "backup"),
    ({"cutoff": "static", "cutoff_options": {"secs": 1}}, "secs"),
    ({"cutoff": "none", "cutoff_options": [1]}, "cutoff_options"),
    ({"cutoff": "none", "backward_passes_per_step": 2}, "backward_passes_per_step"),
    ({"cutoff": "none", "compression": hvd.Compression.fp16}, "compression"),
    ({"cutoff": "none", "op": hvd.Sum}, "op"),
    ({"cutoff": "none", "step_timeout": -3}, "step_timeout"),
])
def test_bad_arguments_raise_value_error_naming_the_argument(kwargs, argument):
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match=argument):
        hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                 named_parameters=model.named_parameters(), **kwargs)


def test_named_parameters_must_cover_the_optimizer():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="named_parameters"):
        hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                 named_parameters=[("weight", model.weight)], cutoff="none")


def loss_step(model, opt):
    opt.zero_grad()
    model(torch.ones(4, 3)).sum().backward()
    opt.step()


def test_stats_report_cutoff_contributors_times_and_censoring():
    model, opt = make("static", cutoff_options={"seconds": 0.5})
    for _ in range(3):
        loss_step(model, opt)
    stats = opt.cutoff_stats()
    assert [s["step"] for s in stats] == [0, 1, 2]
    assert math.isinf(stats[0]["cutoff"])  # step 0 synchronises and checks the config
    assert stats[1]["cutoff"] == pytest.approx(0.5)
    for s in stats:
        assert s["contributors"] == 1 and s["censored"] == [False] and len(s["times"]) == 1
        assert 0 <= s["times"][0] <= s["step_seconds"] + 1e-3
    opt.close()


def test_update_equals_plain_sgd_on_one_rank():
    model, opt = make("none")
    ref = torch.nn.Linear(3, 2)
    ref.load_state_dict(model.state_dict())
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(3):
        loss_step(model, opt)
        loss_step(ref, ref_opt)
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)
    opt.close()


def test_late_step_applies_no_update_and_widens_next_cutoff():
    model, opt = make("static", cutoff_options={"seconds": 0.05})
    loss_step(model, opt)
    loss_step(model, opt)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    model(torch.ones(4, 3)).sum().backward()
    time.sleep(0.15)  # past the cutoff: this rank, the only one, is cut
    opt.step()
    for b, p in zip(before, model.parameters()):
        assert torch.equal(b, p)
    last = opt.cutoff_stats()[-1]
    assert last["contributors"] == 0 and last["censored"] == [True]
    assert last["next_cutoff"] >= 2 * last["cutoff"] * 0.999
    opt.close()


class NaNPolicy:
    def observe(self, times, censored):
        pass

    def cutoff(self):
        return float("nan")


class BrokenPolicy:
    def observe(self, times, censored):
        raise ZeroDivisionError("model exploded")

    def cutoff(self):
        return 0.1


@pytest.mark.parametrize("policy", [NaNPolicy(), BrokenPolicy()], ids=["nan", "raises"])
def test_failing_policy_falls_back_to_waiting_for_all_and_warns_once(policy):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, opt = make(policy)
        for _ in range(5):
            loss_step(model, opt)
    relevant = [w for w in caught if "falling back" in str(w.message)]
    assert len(relevant) == 1
    assert math.isinf(opt.cutoff_stats()[-1]["next_cutoff"])
    assert all(s["contributors"] == 1 for s in opt.cutoff_stats())
    opt.close()


def test_closure_form_returns_the_loss_and_abandons_when_cut():
    model, opt = make("static", cutoff_options={"seconds": 0.05})
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = model(torch.ones(4, 3)).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and len(calls) == 1
    opt.step(closure)  # step 1 runs under the 0.05 s cutoff

    def slow_closure():
        time.sleep(0.1)  # the cutoff passes here; the next module hook abandons the step
        calls.append("forward")
        opt.zero_grad()
        model(torch.ones(4, 3)).sum().backward()
        calls.append("backward done")

    before = [p.detach().clone() for p in model.parameters()]
    assert opt.step(slow_closure) is None
    assert "backward done" not in calls
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    opt.close()


def test_synchronize_then_step_under_skip_synchronize():
    model, opt = make("none")
    opt.zero_grad()
    model(torch.ones(4, 3)).sum().backward()
    opt.synchronize()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    with opt.skip_synchronize():
        opt.step()
    assert len(opt.cutoff_stats()) == 1
    opt.close()


def test_times_vector_matches_numpy_dtype_for_policies():
    seen = {}

    class Spy:
        def observe(self, times, censored):
            seen["times"], seen["censored"] = times, censored

        def cutoff(self):
            return math.inf

    model, opt = make(Spy())
    for _ in range(2):
        loss_step(model, opt)
    assert seen["times"].dtype == np.float64 and seen["censored"].dtype == bool
    opt.close()


def test_frozen_parameters_are_left_alone():
    model = torch.nn.Linear(3, 2)
    model.bias.requires_grad_(False)
    bias = model.bias.detach().clone()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.5),
                                   named_parameters=model.named_parameters(), cutoff="none")
    loss_step(model, opt)
    assert model.bias.grad is None and torch.equal(model.bias, bias)
    opt.close()
