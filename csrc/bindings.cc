// Python bindings of the deadline engine (module horovod_cutoff._C). Calls that wait or copy
// release the GIL; tensors passed in are referenced only for the duration of the call, so
// their references are taken and dropped while the GIL is held.
#include <torch/extension.h>

#include "engine.h"

namespace py = pybind11;
using hvdcut::Engine;

namespace {
at::ScalarType parse_dtype(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "float64") return at::kDouble;
  throw std::invalid_argument("fused buffer dtype must be float32 or float64, got " + name);
}

py::dict to_dict(const hvdcut::StepResult& r) {
  py::dict d;
  d["step"] = r.step;
  d["count"] = static_cast<int64_t>(r.count);
  d["cutoff"] = r.cutoff;
  d["next_cutoff"] = r.next_cutoff;
  d["seconds"] = r.seconds;
  d["submitted_at"] = r.submitted_at;
  d["times"] = r.times;
  d["censored"] = std::vector<bool>(r.censored.begin(), r.censored.end());
  d["fingerprints"] = r.fingerprints;
  return d;
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

  py::class_<Engine>(m, "Engine")
      .def(py::init([](const std::string& name, int rank, int world, int64_t grad_numel,
                       const std::string& dtype, int device, int64_t fingerprint,
                       double first_cutoff) {
             return std::make_unique<Engine>(name, rank, world, grad_numel, parse_dtype(dtype),
                                             device, fingerprint, first_cutoff);
           }),
           py::arg("name"), py::arg("rank"), py::arg("world"), py::arg("grad_numel"),
           py::arg("dtype"), py::arg("device"), py::arg("fingerprint"), py::arg("first_cutoff"))
      .def("contribute",
           [](Engine& e, int64_t step, const std::vector<at::Tensor>& grads) {
             py::gil_scoped_release nogil;
             return e.contribute(step, grads);
           })
      .def("is_cut", &Engine::is_cut)
      .def("wait",
           [](const Engine& e, int64_t step, double timeout_s) {
             py::gil_scoped_release nogil;
             return e.wait(step, timeout_s);
           })
      .def("take",
           [](Engine& e, int64_t step, std::vector<at::Tensor> grads) {
             hvdcut::StepResult r;
             {
               py::gil_scoped_release nogil;
               r = e.take(step, grads);
             }
             return to_dict(r);
           })
      .def("set_next_cutoff", &Engine::set_next_cutoff)
      .def("open_step", &Engine::open_step)
      .def("close", [](Engine& e) {
        py::gil_scoped_release nogil;
        e.close();
      });
}
