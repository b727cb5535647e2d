// Python bindings of the deadline engine (module horovod_cutoff._C). Calls that wait or copy
// release the GIL; tensors passed in are referenced only for the duration of the call, so
// their references are taken and dropped while the GIL is held.
#include <torch/extension.h>

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "engine.h"

namespace py = pybind11;
using hvdcut::Engine;
using hvdcut::StepResult;

namespace {
at::ScalarType parse_dtype(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "float64") return at::kDouble;
  throw std::invalid_argument("fused buffer dtype must be float32 or float64, got " + name);
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
      .def_readonly("next_cutoff", &StepResult::next_cutoff)
      .def_readonly("cutoff_basis", &StepResult::cutoff_basis,
                    "the last step the policy had observed when it chose next_cutoff")
      .def_readonly("seconds", &StepResult::seconds)
      .def_readonly("submitted_at", &StepResult::submitted_at)
      .def_readonly("contributed", &StepResult::contributed)
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
                       double first_cutoff, int coordinator, int max_lag, int watchdog_steps) {
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
             return std::make_unique<Engine>(c);
           }),
           py::arg("name"), py::arg("rank"), py::arg("world"), py::arg("grad_numel"),
           py::arg("dtype"), py::arg("device"), py::arg("fingerprint"), py::arg("first_cutoff"),
           py::arg("coordinator") = 0, py::arg("max_lag") = 2, py::arg("watchdog_steps") = 100)
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
      .def("set_next_cutoff", &Engine::set_next_cutoff, py::arg("seconds"), py::arg("basis"))
      .def("next_observations", &Engine::next_observations, py::arg("timeout_s"),
           py::call_guard<py::gil_scoped_release>())
      .def("dropped_observations", &Engine::dropped_observations)
      .def("pause", &Engine::pause)
      .def("resume", &Engine::resume)
      .def("open_step", &Engine::open_step)
      .def("close", &Engine::close, py::call_guard<py::gil_scoped_release>());
}
