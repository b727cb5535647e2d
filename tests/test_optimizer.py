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


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.mark.parametrize("policy", [NaNPolicy(), BrokenPolicy()], ids=["nan", "raises"])
def test_failing_policy_falls_back_to_waiting_for_all_and_warns_once(policy):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, opt = make(policy)
        for _ in range(5):
            loss_step(model, opt)
        wait_for(lambda: opt._reduction.service.failed is not None)
        for _ in range(3):  # the fallback's cutoff reaches the steps after the failure
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
    loss = opt.step(slow_closure)
    assert isinstance(loss, torch.Tensor) and torch.isnan(loss), "a cut rank's loss is NaN"
    assert opt.cutoff_stats()[-1]["outcome"] in ("cut", "late")  # alone, it is reduced at once
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
    # The service observes on its own thread: give it time on a loaded machine.
    deadline = time.monotonic() + 10
    while "times" not in seen and time.monotonic() < deadline:
        time.sleep(0.01)
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


# ---- hardening: each test below failed before its fix ----------------------------------------


def engine_threads() -> int:
    """Threads of this process (the engine's timer is a C++ thread Python cannot list)."""
    import os
    return len(os.listdir("/proc/self/task"))


def test_state_dict_round_trip_and_vars_work():
    model = torch.nn.Linear(3, 2)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                                   named_parameters=model.named_parameters(), cutoff="none")
    loss_step(model, opt)
    saved = opt.state_dict()
    assert "momentum_buffer" in saved["state"][0]
    assert "_reduction" in vars(opt)
    opt.load_state_dict(saved)  # raised TypeError: descriptor '__dict__' ...
    loss_step(model, opt)
    # A fresh optimizer resumes from the checkpoint (a restarted job).
    fresh = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                                     named_parameters=model.named_parameters(), cutoff="none")
    fresh.load_state_dict(saved)
    torch.testing.assert_close(fresh.state_dict()["state"][0]["momentum_buffer"],
                               saved["state"][0]["momentum_buffer"])
    opt.close()
    fresh.close()


def test_step_nobody_made_zeroes_gradients_and_the_next_step_waits_for_all():
    model, opt = make("static", cutoff_options={"seconds": 0.05})
    loss_step(model, opt)
    loss_step(model, opt)
    opt.zero_grad()
    model(torch.ones(4, 3)).sum().backward()
    time.sleep(0.15)  # past the cutoff: this rank, the only one, is cut
    opt.step()
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters()), \
        "a step nobody made must leave identical (zero) gradients on every rank"
    assert math.isinf(opt.cutoff_stats()[-1]["next_cutoff"])
    opt.zero_grad()
    model(torch.ones(4, 3)).sum().backward()
    time.sleep(0.15)  # late again, but this step waits for every rank
    opt.step()
    assert opt.cutoff_stats()[-1]["contributors"] == 1
    opt.close()


def test_paused_stops_the_clock_and_the_policy_never_sees_the_pause():
    seen = []

    class Spy:
        def observe(self, times, censored):
            seen.append(float(times[0]))

        def cutoff(self):
            return 0.05

    model, opt = make(Spy())
    for _ in range(3):
        loss_step(model, opt)
    with opt.paused():
        time.sleep(0.3)  # evaluation, a checkpoint: six cutoffs long
    loss_step(model, opt)
    loss_step(model, opt)
    stats = opt.cutoff_stats()
    assert [s["contributors"] for s in stats] == [1] * 5, "a pause must not cut anybody"
    assert stats[3]["paused"] and not stats[4]["paused"]
    wait_for(lambda: len(seen) >= 3)  # steps 1, 2 and 4 (0 is start-up, 3 the pause)
    assert max(seen) < 0.2, f"the policy was fed the pause: {seen}"
    opt.close()


def test_pause_without_paused_loses_one_step_not_a_doubling_series():
    model, opt = make("static", cutoff_options={"seconds": 0.02})
    for _ in range(3):
        loss_step(model, opt)
    time.sleep(0.5)  # 25 cutoffs long; before: 0.02, 0.04, ... 0.32 all empty (5 lost steps)
    for _ in range(3):
        loss_step(model, opt)
    counts = [s["contributors"] for s in opt.cutoff_stats()]
    assert counts.count(0) <= 1, counts
    opt.close()


def test_dropped_optimizer_stops_its_timer_and_frees_its_buffers():
    import gc
    model = torch.nn.Linear(3, 2)  # the model outlives its optimizers (its parameters hold hooks)
    baseline = engine_threads()
    for _ in range(5):  # a new optimizer per phase
        opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                       named_parameters=model.named_parameters(),
                                       cutoff="static", cutoff_options={"seconds": 0.05})
        loss_step(model, opt)
        del opt
        gc.collect()
    wait_for(lambda: engine_threads() <= baseline)
    assert engine_threads() <= baseline, "each dropped optimizer leaked its timer thread"


def test_synchronize_then_step_with_closure_applies_the_synchronized_step_once():
    model, opt = make("none")
    opt.zero_grad()
    model(torch.ones(4, 3)).sum().backward()
    opt.synchronize()
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        model(torch.ones(4, 3)).sum().backward()

    with pytest.warns(RuntimeWarning, match="already reduced"):
        opt.step(closure)
    assert calls == []
    loss_step(model, opt)  # a new reduction, not the stale synchronized one
    assert [s["step"] for s in opt.cutoff_stats()] == [0, 1]
    opt.close()


def test_abandon_hook_only_reaches_the_wrapped_models_modules_in_the_stepping_thread():
    import threading
    model, opt = make("static", cutoff_options={"seconds": 0.05})
    other = torch.nn.Linear(3, 2)  # a background model, a data transform: not ours
    loss_step(model, opt)
    errors, ran = [], []

    def background():
        try:
            model(torch.ones(1, 3))  # our model, but another thread
            other(torch.ones(1, 3))
            ran.append("background")
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    def closure():
        time.sleep(0.1)  # cut by now
        other(torch.ones(1, 3))  # not the wrapped model: runs
        ran.append("other")
        t = threading.Thread(target=background)
        t.start()
        t.join()
        model(torch.ones(1, 3))  # the wrapped model: abandoned here
        ran.append("model")

    opt.step(closure)
    assert errors == [] and ran == ["other", "background"], (errors, ran)
    opt.close()


@pytest.mark.parametrize("seconds", [1e10, 1e-9])
def test_absurd_cutoffs_neither_overflow_nor_starve(seconds):
    model, opt = make("static", cutoff_options={"seconds": seconds})
    for _ in range(20):
        loss_step(model, opt)
    counts = [s["contributors"] for s in opt.cutoff_stats()]
    if seconds > 1:
        assert counts == [1] * 20, "a cutoff of 1e10 s overflowed the deadline"
    else:
        assert counts.count(1) >= 10, f"1e-9 s starved every step: {counts}"
    opt.close()


def test_slow_policy_runs_off_the_critical_path():
    class Slow:
        def observe(self, times, censored):
            time.sleep(0.5)

        def cutoff(self):
            return 0.05

    model, opt = make(Slow())
    started = time.monotonic()
    for _ in range(10):
        loss_step(model, opt)
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"10 steps took {elapsed:.1f} s: the policy runs inside step()"
    assert all(s["contributors"] == 1 for s in opt.cutoff_stats())
    bases = [s["cutoff_basis"] for s in opt.cutoff_stats()]
    assert bases[-1] < 9, "a slow policy's cutoff is based on an older step, and says so"
    opt.close()


@pytest.mark.parametrize("kwargs,argument", [
    ({"cutoff_options": {"seconds": 1}}, "cutoff_options"),
    ({"max_lag": 3}, "max_lag"),
    ({"cutoff": "none", "step_timeout": "x"}, "step_timeout"),
    ({"cutoff": "none", "max_lag": 0}, "max_lag"),
    ({"cutoff": "none", "coordinator": 5}, "coordinator"),
    ({"cutoff": "none", "stats_window": 0}, "stats_window"),
    ({"cutoff": "backup", "cutoff_options": {"backup": 1}}, "backup"),
])
def test_more_bad_arguments_name_the_argument(kwargs, argument):
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match=argument):
        hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                 named_parameters=model.named_parameters(), **kwargs)


def test_sparse_gradient_is_an_error_naming_the_parameter_and_sends_zeros():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(emb.parameters(), lr=0.1),
                                   named_parameters=emb.named_parameters(), cutoff="none")
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="weight"):
        opt.step()
    assert opt._reduction.engine.wait(0, 5.0), "the failed step must still be reduced (zeros)"
    opt.close()
    dense = hvd.DistributedOptimizer(torch.optim.SGD(emb.parameters(), lr=0.1),
                                     named_parameters=emb.named_parameters(), cutoff="none",
                                     sparse_as_dense=True)
    before = emb.weight.detach().clone()
    emb(torch.tensor([1, 2])).sum().backward()
    dense.step()
    assert not torch.equal(before, emb.weight)
    dense.close()


def test_failed_pack_still_contributes_so_nobody_waits():
    from horovod_cutoff import _C
    engine = _C.Engine("packfail", 0, 1, 4, "float32", -1, 1, math.inf)
    with pytest.raises(RuntimeError, match="overflow"):
        engine.contribute(0, [torch.ones(50)])  # more elements than the fused buffer holds
    assert engine.wait(0, 5.0)
    result = engine.take(0, [torch.ones(4)])
    assert result.count == 0 and result.censored[0]
    engine.close()


def test_stats_window_is_bounded_by_default():
    model, opt = make("none", stats_window=5)
    for _ in range(8):
        loss_step(model, opt)
    assert [s["step"] for s in opt.cutoff_stats()] == [3, 4, 5, 6, 7]
    opt.close()


def test_exception_on_the_timer_thread_is_an_error_not_an_abort(monkeypatch):
    monkeypatch.setenv("HOROVOD_CUTOFF_INJECT_TIMER_FAULT", "1")
    model, opt = make("static", cutoff_options={"seconds": 0.02})
    loss_step(model, opt)
    opt.zero_grad()
    model(torch.ones(4, 3)).sum().backward()
    time.sleep(0.1)  # the timer's cut throws: before, std::terminate ended the process
    with pytest.raises(RuntimeError, match="deadline timer failed: injected fault"):
        opt.step()
    opt.close()


class LivePolicy:
    """Records the service's calls: serve_live() when it starts, close() when it stops."""

    def __init__(self):
        self.calls = []

    def serve_live(self):
        self.calls.append("serve_live")

    def close(self):
        self.calls.append("close")

    def observe(self, times, censored):
        pass

    def cutoff(self):
        return math.inf


def test_the_service_moves_a_policys_long_work_off_its_thread_and_stops_it_on_close():
    policy = LivePolicy()
    model, opt = make(policy)
    loss_step(model, opt)
    assert policy.calls == ["serve_live"]
    opt.close()
    assert policy.calls == ["serve_live", "close"]


class FailingLivePolicy(LivePolicy):
    """A live policy whose cutoff() breaks after its first answer."""

    def cutoff(self):
        if self.calls.count("cutoff") >= 1:
            raise RuntimeError("model diverged")
        self.calls.append("cutoff")
        return math.inf


def test_a_policy_replaced_for_failing_has_its_background_work_stopped_at_once():
    policy = FailingLivePolicy()
    model, opt = make(policy)
    with pytest.warns(RuntimeWarning, match="model diverged"):
        for _ in range(3):  # step 1's observation makes the service answer again: it fails
            loss_step(model, opt)
        deadline = time.monotonic() + 5
        while "close" not in policy.calls and time.monotonic() < deadline:
            time.sleep(0.01)
    assert policy.calls == ["serve_live", "cutoff", "close"]  # before the optimizer closes
    opt.close()
    assert policy.calls.count("close") == 1


def test_the_service_measures_the_step_overhead_and_tells_a_policy_built_without_one():
    model, opt = make("adaptive")
    for _ in range(12):
        loss_step(model, opt)
    service = opt._reduction.service
    deadline = time.monotonic() + 10  # the service observes on its own thread
    while service.observed < 11 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)  # and step 12's, if it comes, is told before we look
    # The service sees steps 1-11 (step 0 checks the configuration), and maybe step 12 too:
    # its deadline passes while this rank is idle after its last step, so it ends cut.
    beyond = sorted(s["step_seconds"] - max(s["times"]) for s in opt.cutoff_stats()[1:])
    middle = len(beyond) // 2
    assert service.policy.overhead == service.overhead.seconds > 0
    assert beyond[middle - 1] <= service.policy.overhead <= beyond[middle + 1]
    opt.close()

    model, opt = make("adaptive", cutoff_options={"overhead": 0.25})
    for _ in range(12):
        loss_step(model, opt)
    time.sleep(0.5)
    assert opt._reduction.service.policy.overhead == 0.25  # a given overhead stays as given
    opt.close()


def test_the_overhead_meter_takes_the_median_beyond_each_steps_compute():
    from horovod_cutoff.service import OverheadMeter

    meter = OverheadMeter(window=4, first=2)
    meter.add(0.30, np.array([0.1, 0.25, np.nan]))  # 0.05 beyond the last arrival
    assert meter.seconds is None  # fewer than `first` steps
    meter.add(0.5, np.array([np.nan, np.nan]))       # nobody's time: no sample
    meter.add(0.1, np.array([0.2]))                  # a clock step backwards counts as 0
    assert meter.seconds == pytest.approx(0.025)
    for seconds in (1.3, 1.3, 1.3):                  # the window keeps the last 4 steps
        meter.add(seconds, np.array([1.0]))
    assert meter.seconds == pytest.approx(0.3)
