// Python bindings of the deadline engine and the CPU predictor (module horovod_cutoff._C).
// Calls that wait, copy or compute release the GIL; tensors passed in are referenced only for
// the duration of the call, so their references are taken and dropped while the GIL is held.
#include <torch/extension.h>

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "engine.h"
#include "predictor.h"

namespace py = pybind11;
using hvdcut::Engine;
using hvdcut::Predictor;
using hvdcut::StepResult;

namespace {
at::ScalarType parse_dtype(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "float64") return at::kDouble;
  throw std::invalid_argument("fused buffer dtype must be float32 or float64, got " + name);
}

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using BoolArray = py::array_t<bool, py::array::c_style | py::array::forcecast>;

// A module's state_dict as host copies (name -> float32 array): read with the GIL held.
hvdcut::WeightMap to_weights(const py::dict& state) {
  hvdcut::WeightMap out;
  for (auto item : state) {
    auto array = py::cast<FloatArray>(item.second);
    hvdcut::HostTensor t;
    t.shape.assign(array.shape(), array.shape() + array.ndim());
    t.data.assign(array.data(), array.data() + array.size());
    out.emplace(py::cast<std::string>(item.first), std::move(t));
  }
  return out;
}

// Checks that `array` holds `expected` elements, naming the argument if not.
void check_size(const py::array& array, py::ssize_t expected, const char* name) {
  if (array.size() != expected) {
    throw std::invalid_argument(std::string(name) + " must have " + std::to_string(expected) +
                                " elements, got " + std::to_string(array.size()));
  }
}

template <typename T, typename U = T>
py::array_t<T> to_array(const std::vector<U>& v) {
  py::array_t<T> out(static_cast<py::ssize_t>(v.size()));
  auto w = out.template mutable_unchecked<1>();
  for (size_t i = 0; i < v.size(); ++i) w(static_cast<py::ssize_t>(i)) = static_cast<T>(v[i]);
  return out;
}
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "horovod_cutoff C++ core: deadline timer and fused pack/unpack over Horovod allreduce";
#ifdef HOROVOD_CUTOFF_WITH_CUDA
  m.attr("cuda_built") = true;
#else
  m.attr("cuda_built") = false;
#endif
  py::enum_<hvdcut::Outcome>(m, "Outcome")
      .value("CONTRIBUTED", hvdcut::Outcome::kContributed)
      .value("CUT", hvdcut::Outcome::kCut)
      .value("LATE", hvdcut::Outcome::kLate);

  py::class_<StepResult>(m, "StepResult", "What one completed reduction told every rank.")
      .def_readonly("step", &StepResult::step)
      .def_readonly("count", &StepResult::count, "ranks whose gradients are in the average")
      .def_readonly("cutoff", &StepResult::cutoff, "seconds; inf: the step waited for all")
      .def_readonly("quorum", &StepResult::quorum, "k: the k-th arrival ended it (0: none)")
      .def_readonly("next_cutoff", &StepResult::next_cutoff)
      .def_readonly("cutoff_basis", &StepResult::cutoff_basis,
                    "the last step the policy had observed when it chose next_cutoff")
      .def_readonly("seconds", &StepResult::seconds)
      .def_readonly("submitted_at", &StepResult::submitted_at)
      .def_readonly("announced_at", &StepResult::announced_at,
                    "when this rank announced its arrival, from step start (NaN: it did not)")
      .def_readonly("started", &StepResult::started,
                    "step start on this host's steady clock (seconds): compares ranks of one host")
      .def_readonly("contributed", &StepResult::contributed)
      .def_readonly("ended_by_quorum", &StepResult::ended_by_quorum)
      .def_readonly("paused", &StepResult::paused)
      .def_property_readonly("times", [](const StepResult& r) { return to_array<double>(r.times); })
      .def_property_readonly("censored",
                             [](const StepResult& r) { return to_array<bool>(r.censored); })
      .def_property_readonly("fingerprints",
                             [](const StepResult& r) { return to_array<int64_t>(r.fingerprints); })
      .def_property_readonly("behind",
                             [](const StepResult& r) { return to_array<int64_t>(r.behind); })
      .def("__repr__", [](const StepResult& r) {
        return "StepResult(step=" + std::to_string(r.step) + ", count=" + std::to_string(r.count) +
               ", cutoff=" + std::to_string(r.cutoff) + ")";
      });

  py::class_<Engine>(m, "Engine")
      .def(py::init([](const std::string& name, int rank, int world, int64_t grad_numel,
                       const std::string& dtype, int device, int64_t fingerprint,
                       double first_cutoff, int coordinator, int max_lag, int watchdog_steps,
                       bool arrivals, const std::string& store_host, int store_port,
                       double store_timeout) {
             hvdcut::EngineConfig c;
             c.name = name;
             c.rank = rank;
             c.world = world;
             c.grad_numel = grad_numel;
             c.dtype = parse_dtype(dtype);
             c.device = device;
             c.fingerprint = fingerprint;
             c.first_cutoff = first_cutoff;
             c.coordinator = coordinator;
             c.max_lag = max_lag;
             c.watchdog_steps = watchdog_steps;
             c.arrivals = arrivals;
             c.store_host = store_host;
             c.store_port = store_port;
             c.store_timeout = store_timeout;
             return std::make_unique<Engine>(c);
           }),
           py::arg("name"), py::arg("rank"), py::arg("world"), py::arg("grad_numel"),
           py::arg("dtype"), py::arg("device"), py::arg("fingerprint"), py::arg("first_cutoff"),
           py::arg("coordinator") = 0, py::arg("max_lag") = 2, py::arg("watchdog_steps") = 100,
           py::arg("arrivals") = false, py::arg("store_host") = "", py::arg("store_port") = 0,
           py::arg("store_timeout") = 30.0)
      .def("contribute",
           [](Engine& e, int64_t step, const std::vector<at::Tensor>& grads) {
             py::gil_scoped_release nogil;
             return e.contribute(step, grads);
           })
      .def("withdraw", &Engine::withdraw, py::call_guard<py::gil_scoped_release>())
      .def("is_cut", &Engine::is_cut)
      .def("wait",
           [](const Engine& e, int64_t step, double timeout_s) {
             py::gil_scoped_release nogil;
             return e.wait(step, timeout_s);
           })
      .def("take",
           [](Engine& e, int64_t step, std::vector<at::Tensor> grads) {
             py::gil_scoped_release nogil;
             return e.take(step, grads);
           })
      .def("set_next_cutoff", &Engine::set_next_cutoff, py::arg("seconds"), py::arg("basis"),
           py::arg("quorum") = 0)
      .def("store_port", &Engine::store_port)
      .def("next_observations", &Engine::next_observations, py::arg("timeout_s"),
           py::call_guard<py::gil_scoped_release>())
      .def("dropped_observations", &Engine::dropped_observations)
      .def("pause", &Engine::pause)
      .def("resume", &Engine::resume)
      .def("open_step", &Engine::open_step)
      .def("close", &Engine::close, py::call_guard<py::gil_scoped_release>());

  py::class_<Predictor>(m, "Predictor",
                        "The run-time model's hot path on the CPU (kernels/cpu.py wraps it).")
      .def(py::init([](const py::dict& weights, int workers, int samples, double overhead,
                       int objective, int bins, uint64_t seed, const std::string& isa) {
             if (objective < 0 || objective > 2) {
               throw std::invalid_argument("objective: unknown code");
             }
             hvdcut::PredictorConfig c;
             c.workers = workers;
             c.samples = samples;
             c.overhead = overhead;
             c.objective = static_cast<hvdcut::Objective>(objective);
             c.bins = bins;
             c.seed = seed;
             c.isa = isa;
             auto w = to_weights(weights);
             py::gil_scoped_release nogil;
             return std::make_unique<Predictor>(c, w);
           }),
           py::arg("weights"), py::arg("workers"), py::arg("samples"), py::arg("overhead"),
           py::arg("objective"), py::arg("bins"), py::arg("seed"), py::arg("isa") = "auto")
      .def("step",
           [](Predictor& p, const FloatArray& times, const BoolArray& censored, double rate,
              double spread) {
             const int n = p.config().workers;
             check_size(times, n, "times");
             check_size(censored, n, "censored");
             const float* t = times.data();
             const auto* c = reinterpret_cast<const uint8_t*>(censored.data());
             py::gil_scoped_release nogil;
             return p.step(t, c, rate, spread);
           },
           py::arg("times"), py::arg("censored"), py::arg("rate"), py::arg("spread") = 1.0)
      .def("prepare", &Predictor::prepare, py::call_guard<py::gil_scoped_release>())
      .def("set_overhead", &Predictor::set_overhead, py::arg("seconds"))
      .def("set_noise",
           [](Predictor& p, const FloatArray& z, const FloatArray& transition,
              const FloatArray& uniform, const FloatArray& normal) {
             const py::ssize_t s = p.config().samples, n = p.config().workers, d = p.dims().D;
             check_size(z, s * d, "noise.z");
             check_size(transition, s * d, "noise.transition");
             check_size(uniform, s * n, "noise.uniform");
             check_size(normal, s * n, "noise.normal");
             py::gil_scoped_release nogil;
             p.set_noise(z.data(), transition.data(), uniform.data(), normal.data());
           })
      .def("load_weights",
           [](Predictor& p, const py::dict& weights) {
             auto w = to_weights(weights);
             py::gil_scoped_release nogil;
             return p.load_weights(w);
           })
      .def_property_readonly("version", &Predictor::version)
      .def_property_readonly("isa", &Predictor::isa, "the kernels in use: 'avx2' or 'baseline'")
      .def("state",
           [](const Predictor& p) {
             hvdcut::PredictorState s;
             {
               py::gil_scoped_release nogil;  // waits for a step on another thread
               s = p.state();
             }
             const auto n = static_cast<py::ssize_t>(p.config().workers);
             const auto h = static_cast<py::ssize_t>(p.dims().H);
             py::array_t<float> hs({n, h});
             std::copy(s.h.begin(), s.h.end(), hs.mutable_data());
             return py::make_tuple(hs, to_array<float>(s.g), to_array<float>(s.z),
                                   to_array<float>(s.z_sd), s.ref, s.steps);
           })
      .def("next_noise",
           [](Predictor& p) {
             std::vector<std::vector<float>> parts;
             {
               py::gil_scoped_release nogil;
               parts = p.next_noise();
             }
             py::list out;
             for (const auto& part : parts) out.append(to_array<float>(part));
             return out;
           })
      .def("last_log_samples", [](const Predictor& p) {
        std::vector<float> v;
        {
          py::gil_scoped_release nogil;
          v = p.last_log_samples();
        }
        const auto s = static_cast<py::ssize_t>(p.config().samples);
        py::array_t<float> out({s, static_cast<py::ssize_t>(v.size()) / s});
        std::copy(v.begin(), v.end(), out.mutable_data());
        return out;
      });
}
