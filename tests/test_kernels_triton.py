"""The fused Triton hot path against the PyTorch reference (``model.inference``), given the same
noise: the new state, the log samples and the cutoff. Runs on CPU tensors under Triton's
interpreter (how CI runs it, without a GPU); the tests marked ``gpu`` run the compiled kernels
on a CUDA device, in a subprocess without the interpreter, and are skipped without one."""

from __future__ import annotations

import os

# Before triton is imported: Triton picks the interpreter when it decorates the kernels, at
# import, and the interpreter reads the variable again while it runs them, so it stays set.
os.environ["TRITON_INTERPRET"] = "1"

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton", reason="triton is not installed (pip install .[triton])")

from horovod_cutoff.kernels import triton_predictor  # noqa: E402
from horovod_cutoff.kernels.triton_predictor import TritonPredictor, compare_with_reference, objective_at  # noqa: E402
from horovod_cutoff.model import Noise, RunTimeModel, load_model  # noqa: E402
from horovod_cutoff.model.inference import best_cutoff_grid, hot_path, predictive_log_times  # noqa: E402

if not triton_predictor.interpreting():
    pytest.skip("kernels.triton_predictor was imported before this module set TRITON_INTERPRET=1 "
                "(run this file on its own)", allow_module_level=True)

TOL = 1e-5  # float32 tolerance on the state and on log seconds


@pytest.fixture(scope="module")
def model() -> RunTimeModel:
    return load_model()


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_agrees(records: list, tol: float = TOL) -> None:
    for r in records:
        for key in ("h", "g", "z", "z_sd", "ref", "log_samples"):
            assert r[key] <= tol, f"step {r['step']}: {key} differs by {r[key]:.3g} (> {tol})"
        assert r["agree"], (f"step {r['step']}: cutoff {r['cutoff']} vs reference {r['cutoff_reference']} "
                            "and not a tie of the objective")
        # The grid argmax itself, on the kernel's own samples: the same bins, the same candidate.
        assert r["cutoff"] == pytest.approx(r["cutoff_self"], rel=1e-9), f"step {r['step']}"
        assert np.isfinite(r["value"])


@pytest.mark.parametrize("objective,rate", [("step", None), ("ratio", None), ("lambda", 10.0),
                                            ("lambda", None)])
def test_matches_reference_over_steps_with_odd_sizes(model, objective, rate):
    records = compare_with_reference(model, workers=7, samples=33, steps=3, objective=objective,
                                     overhead=0.02, rate=rate, seed=1, censored_fraction=0.3)
    assert_agrees(records)
    assert any(r["value_reference"] > 0 for r in records) or objective == "lambda"


@pytest.mark.parametrize("spread", [0.5, 1.7])
@pytest.mark.parametrize("workers,samples", [(7, 33), (1, 9)])
def test_spread_matches_reference(model, spread, workers, samples):
    records = compare_with_reference(model, workers=workers, samples=samples, steps=3, overhead=0.02,
                                     seed=8, censored_fraction=0.3 if workers > 1 else 0.0,
                                     absent=(4,) if workers > 1 else (), spread=spread)
    assert_agrees(records)


def test_spread_is_a_runtime_input_following_hot_path(model):
    """One predictor, the spread changing from step to step (as the calibration moves it),
    against ``hot_path(..., bins=, spread=)`` itself: state, log samples and cutoff."""
    N, S, o, bins = 7, 33, 0.02, 4096
    p = TritonPredictor(model, N, S, overhead=o, bins=bins, device="cpu")
    gen = torch.Generator().manual_seed(9)
    rng = np.random.default_rng(9)
    state = model.initial_state(1, N)
    spreads = (1.7, 0.5, 1.0)
    samples = {}
    for step, spread in enumerate(spreads):
        x = (0.3 * rng.lognormal(0.0, 0.3, N)).astype(np.float32)
        x[2] = np.nan if step == 1 else x[2]
        times = torch.from_numpy(x)
        cens = torch.from_numpy((rng.random(N) < 0.2) & ~np.isnan(x))
        noise = Noise.draw(S, N, model.D, gen)
        c_ref, state, x_ref = hot_path(model, state, times, cens, noise, o, bins=bins, spread=spread)
        c = p.step(times, cens, noise=noise, spread=spread)
        got = p.state()
        for name in ("h", "g", "z", "z_sd", "ref"):
            torch.testing.assert_close(getattr(got, name), getattr(state, name), atol=TOL, rtol=0)
        log_k = p.last_log_samples()
        torch.testing.assert_close(log_k, torch.log(x_ref), atol=TOL, rtol=0)
        present = ~torch.isnan(times)
        kept = torch.log(x_ref[:, present])
        if c != pytest.approx(c_ref, rel=1e-5):  # then a tie of the objective on the reference's samples
            below = x_ref[:, present][x_ref[:, present] <= c * (1 + 1e-5)]
            twin = float(below.max()) if below.numel() else c
            assert objective_at(kept, twin, o, "step", None) == pytest.approx(
                objective_at(kept, c_ref, o, "step", None), rel=1e-5), f"step {step}"
        assert c == pytest.approx(best_cutoff_grid(log_k[:, present], o, bins=bins)[0], rel=1e-9)
        samples[step] = log_k
    # The spread acted: the samples drawn at 1.7 are wider than those drawn at 0.5.
    assert float(samples[0].std(0).mean()) > float(samples[1].std(0).mean())


def test_spread_one_is_the_default_bit_for_bit(model):
    """spread=1.0 is the default (the unscaled path, bit for bit); bad spreads are named."""
    noise = Noise.draw(12, 4, model.D, torch.Generator().manual_seed(1))
    times, cens = torch.tensor([0.3, 0.35, 0.5, 0.28]), torch.tensor([False, False, True, False])
    runs = []
    for kwargs in ({}, {"spread": 1.0}):
        p = TritonPredictor(model, 4, 12, overhead=0.01, device="cpu")
        runs.append((p.step(times, cens, noise=noise, **kwargs), p.last_log_samples()))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])
    p = TritonPredictor(model, 4, 12, device="cpu")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="spread"):
            p.step(times, cens, spread=bad)


def test_set_overhead_gives_what_building_with_it_gives(model):
    """The live service sets the measured overhead on a built predictor: the next step
    chooses as one built with it (the overhead travels in each step's scalar block)."""
    gen = torch.Generator().manual_seed(2)
    rng = np.random.default_rng(2)
    late = TritonPredictor(model, 5, 16, overhead=0.0, device="cpu")
    built = TritonPredictor(model, 5, 16, overhead=0.2, device="cpu")
    cutoffs = []
    for step in range(3):
        if step == 1:
            late.set_overhead(0.2)
        times = torch.from_numpy((0.1 * rng.lognormal(0.0, 0.5, 5)).astype(np.float32))
        cens = torch.zeros(5, dtype=torch.bool)
        noise = Noise.draw(16, 5, model.D, gen)
        cutoffs.append((late.step(times, cens, noise=noise), built.step(times, cens, noise=noise)))
    assert cutoffs[0][0] != cutoffs[0][1] and all(a == b for a, b in cutoffs[1:])
    with pytest.raises(ValueError, match="overhead"):
        late.set_overhead(float("inf"))


def test_objective_value_matches_reference(model):
    records = compare_with_reference(model, workers=5, samples=17, steps=2, seed=3)
    for r in records:
        if r["equal"]:
            assert r["value"] == pytest.approx(r["value_reference"], rel=1e-5)


def test_single_worker(model):
    assert_agrees(compare_with_reference(model, workers=1, samples=9, steps=3, seed=2,
                                         censored_fraction=0.0))


def test_absent_workers_keep_state_and_are_left_out(model):
    records = compare_with_reference(model, workers=7, samples=12, steps=3, seed=4, absent=(2, 5))
    assert_agrees(records)
    # Directly: an absent worker's h does not move, and the cutoff ignores its samples.
    p = TritonPredictor(model, 4, 8, overhead=0.01, device="cpu")
    gen = torch.Generator().manual_seed(0)
    p.step(torch.tensor([0.3, 0.4, 0.5, 0.6]), torch.zeros(4, dtype=torch.bool),
           noise=Noise.draw(8, 4, model.D, gen))
    before = p.state().h.clone()
    times = torch.tensor([0.3, float("nan"), 0.5, 0.6])
    c = p.step(times, torch.zeros(4, dtype=torch.bool), noise=Noise.draw(8, 4, model.D, gen))
    after = p.state().h
    assert torch.equal(after[0, 1], before[0, 1])
    assert not torch.equal(after[0, 0], before[0, 0])
    kept = p.last_log_samples()[:, [0, 2, 3]]
    assert c == pytest.approx(best_cutoff_grid(kept, 0.01)[0], rel=1e-9)


def test_reference_follows_the_lower_median_with_ties_zeros_and_absent_workers(model):
    # Even counts of present workers, ties, a zero time (log clamps at 1e-30) and an absent one.
    steps = [[0.5, 0.2, 0.2, 0.9, float("nan"), 0.7, 0.2, 0.0, 0.3],
             [0.4, 0.4, 0.1, 0.8, 0.6, float("nan"), 0.4, 0.5, 0.45]]
    p = TritonPredictor(model, 9, 2, device="cpu")
    state = model.initial_state(1, 9)
    cens = torch.zeros(9, dtype=torch.bool)
    for times in map(torch.tensor, steps):
        p.step(times, cens)
        state, _ = model.step(state, times.unsqueeze(0), cens.unsqueeze(0), score=False)
        assert float(p.state().ref) == pytest.approx(float(state.ref), abs=1e-6)
        torch.testing.assert_close(p.state().h, state.h, atol=TOL, rtol=0)


def test_censored_workers_change_the_state(model):
    p = TritonPredictor(model, 3, 8, device="cpu")
    q = TritonPredictor(model, 3, 8, device="cpu")
    noise = Noise.draw(8, 3, model.D, torch.Generator().manual_seed(0))
    times = torch.tensor([0.2, 0.3, 0.3])
    p.step(times, torch.tensor([False, False, False]), noise=noise)
    q.step(times, torch.tensor([False, True, True]), noise=noise)
    assert not torch.allclose(p.state().h, q.state().h)


def test_every_sample_equal_takes_the_one_candidate(model):
    # One worker, one sample: the range is a point, best_cutoff_grid's special case.
    records = compare_with_reference(model, workers=1, samples=1, steps=2, seed=5, censored_fraction=0.0)
    assert_agrees(records)


def test_few_bins(model):
    assert_agrees(compare_with_reference(model, workers=6, samples=10, steps=2, seed=6, bins=5))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy, on the NaN arithmetic inside the kernels
def test_nobody_present_on_the_first_step_gives_nan(model):
    p = TritonPredictor(model, 3, 4, device="cpu")
    c = p.step(torch.full((3,), float("nan")), torch.zeros(3, dtype=torch.bool))
    assert np.isnan(c)
    state, _ = model.step(model.initial_state(1, 3), torch.full((1, 3), float("nan")),
                          torch.zeros(1, 3, dtype=torch.bool), score=False)
    got = p.state()
    assert torch.isnan(got.ref).all()
    torch.testing.assert_close(got.g, state.g, atol=TOL, rtol=0)
    torch.testing.assert_close(got.h, state.h, atol=TOL, rtol=0)


def test_weight_swap_bumps_the_version_and_follows_the_new_model(model):
    other = RunTimeModel(**model.hparams)
    torch.manual_seed(7)
    other.load_state_dict({k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()})
    other.eval()
    N, S, o = 5, 11, 0.01
    p = TritonPredictor(model, N, S, overhead=o, device="cpu")
    assert p.version == 1
    gen = torch.Generator().manual_seed(3)
    state = model.initial_state(1, N)
    times = [torch.tensor([0.30, 0.32, 0.31, 0.45, 0.29]), torch.tensor([0.33, 0.31, 0.30, 0.50, 0.28])]
    cens = torch.zeros(N, dtype=torch.bool)
    for step, current in enumerate([model, other]):
        if step == 1:
            assert p.load_weights(other) == 2 and p.version == 2
        noise = Noise.draw(S, N, model.D, gen)
        c = p.step(times[step], cens, noise=noise)
        with torch.no_grad():
            state, _ = current.step(state, times[step].unsqueeze(0), cens.unsqueeze(0), score=False)
            log_ref = predictive_log_times(current, state, noise)
        got = p.state()
        torch.testing.assert_close(got.h, state.h, atol=TOL, rtol=0)
        torch.testing.assert_close(got.g, state.g, atol=TOL, rtol=0)
        torch.testing.assert_close(p.last_log_samples(), log_ref, atol=TOL, rtol=0)
        assert c == pytest.approx(best_cutoff_grid(p.last_log_samples(), o)[0], rel=1e-9)
    # Swapping back reuses the first buffer.
    assert p.load_weights(model) == 3


def test_load_weights_rejects_another_architecture(model):
    p = TritonPredictor(model, 2, 4, device="cpu")
    with pytest.raises(ValueError, match="model"):
        p.load_weights(RunTimeModel(hidden=16))
    assert p.version == 1


def test_prepare_draws_seeded_noise(model):
    times, cens = torch.tensor([0.2, 0.25, 0.3]), torch.zeros(3, dtype=torch.bool)
    cutoffs = []
    for _ in range(2):
        p = TritonPredictor(model, 3, 8, seed=11, device="cpu")
        p.prepare()
        cutoffs.append(p.step(times, cens))
        cutoffs.append(p.step(times, cens))  # not prepared: the step draws its own noise
    assert cutoffs[:2] == cutoffs[2:]
    assert all(np.isfinite(cutoffs))


def test_set_state_round_trips(model):
    p = TritonPredictor(model, 4, 6, device="cpu")
    state, _ = model.step(model.initial_state(1, 4), torch.tensor([[0.2, 0.3, 0.25, 0.4]]),
                          torch.zeros(1, 4, dtype=torch.bool), score=False)
    p.set_state(state)
    got = p.state()
    for name in ("h", "g", "z", "z_sd", "ref"):
        assert torch.equal(getattr(got, name), getattr(state, name).float()), name
    assert got.steps == state.steps


def test_bad_arguments_are_named(model, monkeypatch):
    with pytest.raises(ValueError, match="objective"):
        TritonPredictor(model, 4, 8, objective="median", device="cpu")
    with pytest.raises(ValueError, match="workers"):
        TritonPredictor(model, 0, 8, device="cpu")
    with pytest.raises(ValueError, match="overhead"):
        TritonPredictor(model, 4, 8, overhead=-1.0, device="cpu")
    p = TritonPredictor(model, 4, 8, device="cpu")
    with pytest.raises(ValueError, match="4 entries"):
        p.step(torch.ones(3), torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="noise.uniform"):
        bad = Noise.draw(8, 3, model.D)
        p.step(torch.ones(4), torch.zeros(4, dtype=torch.bool),
               noise=Noise(bad.z, bad.transition, bad.uniform, torch.zeros(8, 4)))
    monkeypatch.setattr(triton_predictor, "interpreting", lambda: False)  # as if compiled
    with pytest.raises(ValueError, match="device"):
        TritonPredictor(model, 4, 8, device="cpu")


# ----- on a real GPU: the compiled kernels, without the interpreter ----------------------------------

BIND_CHECK = """
import json
import torch
import triton.runtime.jit as jit
from triton.backends.compiler import GPUTarget
from triton.compiler import make_backend
import horovod_cutoff.kernels.triton_predictor as tp
from horovod_cutoff.model import load_model

assert isinstance(tp._cutoff_kernel, jit.JITFunction), "the kernels were built for the interpreter"
backend = make_backend(GPUTarget("cuda", 90, 32))
bound = {}

def bind_only(self, *args, grid, warmup, **kwargs):
    # What JITFunction.run does before it needs a device: bind and specialise the arguments.
    binder = jit.create_function_from_signature(self.signature, self.params, backend)
    try:
        binder(*args, **kwargs)
        bound[self.fn.__name__] = "ok"
    except Exception as err:
        bound[self.fn.__name__] = f"{type(err).__name__}: {err}"

jit.JITFunction.run = bind_only
tp.interpreting = lambda: True  # only so that a CPU predictor can be built; nothing runs
p = tp.TritonPredictor(load_model(), 16, 32, device="cpu")
p._launch(0)
print(json.dumps(bound))
"""


def test_launch_arguments_bind_in_the_compiled_launcher():
    # Regression: a kernel argument named `params` was shadowed by a local of the function Triton
    # generates to bind a compiled kernel's arguments ("failed to specialize argument of type:
    # dict" on the first GPU step). The interpreter binds differently, so only a launch without
    # TRITON_INTERPRET shows it; binding needs no device.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", BIND_CHECK], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    bound = json.loads(proc.stdout.strip().splitlines()[-1])
    assert bound == {name: "ok" for name in ("_embed_pool_kernel", "_update_kernel", "_sample_kernel",
                                             "_cutoff_kernel")}, bound


GPU_CHECK = """
import json, sys
import torch
from horovod_cutoff.model import load_model
from horovod_cutoff.kernels.triton_predictor import TritonPredictor, compare_with_reference
objective, rate = sys.argv[1], (None if sys.argv[2] == "none" else float(sys.argv[2]))
spread = float(sys.argv[3])
model = load_model()
records = compare_with_reference(model, workers=1024, samples=1024, steps=4, objective=objective,
                                 rate=rate, device="cuda", seed=0, censored_fraction=0.2, absent=(3, 700),
                                 spread=spread)
p = TritonPredictor(model, 1024, 1024, device="cuda")
x = torch.rand(1024) + 0.5
p.step(x, torch.zeros(1024, dtype=torch.bool))
# The spread is a runtime input of the captured graph: replays at other spreads change the samples.
p.step(x, torch.zeros(1024, dtype=torch.bool), spread=1.0)
graph = p._graphs[0] is not None
a = p.last_log_samples()
p.step(x, torch.zeros(1024, dtype=torch.bool), spread=2.0)
b = p.last_log_samples()
replayed = graph and p._graphs[0] is not None
print(json.dumps({"records": records, "graph": replayed,
                  "spread_acts": bool(b.std(0).mean() > 1.5 * a.std(0).mean())}))
"""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("objective,rate,spread", [("step", None, 1.0), ("ratio", None, 1.0),
                                                   ("lambda", 2000.0, 1.0), ("step", None, 1.7),
                                                   ("lambda", 2000.0, 0.5)])
def test_gpu_compiled_kernels_match_reference_at_1024(objective, rate, spread):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", GPU_CHECK, objective, str(rate).lower(), str(spread)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["graph"], "the launches were not captured as a CUDA graph"
    assert result["spread_acts"], "a replay at spread 2 did not widen the samples"
    assert_agrees(result["records"], tol=1e-4)  # GPU exp/log are not bit-equal to torch's CPU ones


def test_the_predictive_policy_runs_on_the_triton_path(model, monkeypatch):
    # Regression: the policy rebuilds its predictor when N changes by reading `workers`, which
    # only the CPU path had, so on a GPU coordinator every step failed over to `adaptive`.
    from horovod_cutoff.policies.predictive import Predictive
    from horovod_cutoff.sim import replay
    from horovod_cutoff.traces.generators import generate

    def on_triton(m, workers, samples, overhead, objective, bins, seed):
        return TritonPredictor(m, workers, samples, overhead, objective, bins, seed, device="cpu")

    monkeypatch.setattr("horovod_cutoff.policies.predictive.make_predictor", on_triton)
    policy = Predictive(overhead=0.02, samples=9, model=model)
    replay(generate("markov", 5, 6, seed=0), policy, overhead=0.02)
    assert policy.failed is None and np.isfinite(policy.cutoff())
    assert policy.calibration.spread != 1.0  # it read the kernel's samples back
