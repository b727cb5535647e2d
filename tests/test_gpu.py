"""GPU path of the fused pack/unpack and the deadline engine (skipped without a CUDA device)."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def test_cuda_step_averages_gradients_on_device():
    import horovod_cutoff._C as C
    import horovod_cutoff.torch as hvd

    if not C.cuda_built:
        pytest.fail("a CUDA device is present but the extension was built without CUDA")
    hvd.init()
    model = torch.nn.Linear(64, 32).cuda()
    ref = torch.nn.Linear(64, 32).cuda()
    ref.load_state_dict(model.state_dict())
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                   named_parameters=model.named_parameters(), cutoff="none")
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    x = torch.randn(8, 64, device="cuda")
    for net, o in ((model, opt), (ref, ref_opt)):
        o.zero_grad()
        net(x).square().sum().backward()
        o.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)
    assert opt.cutoff_stats()[0]["contributors"] == 1
    opt.close()
