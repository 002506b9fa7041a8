"""k fused U-Nets (diffseg/fused.py) equal k separate ones: forward, gradients and one
optimizer step, to 1e-5 (issue 18, item 5), in 2D and 3D, with and without the timestep MLP."""
import pytest
import torch

from diffseg.fused import FusedUNet
from diffseg.nets import UNet


@pytest.mark.parametrize("dims,time_embedding,optimizer", [(2, False, "sgd"), (2, True, "adamw"), (3, False, "adamw")])
def test_k_fused_runs_equal_k_separate_runs(dims, time_embedding, optimizer):
    torch.manual_seed(0)
    k, b, c, width, depth = 3, 2, 3, 4, 2
    size = (20, 20) if dims == 2 else (12, 12, 12)  # 20: odd sizes inside, as real images have
    nets = [UNet(c, 2, width, depth, dropout=False, time_embedding=time_embedding, dims=dims) for _ in range(k)]
    fused = FusedUNet.from_nets(nets, c, 2, width, depth, dropout=False, time_embedding=time_embedding)
    xs = [torch.randn(b, c, *size) for _ in range(k)]
    ts = torch.randint(0, 1000, (k, b)) if time_embedding else None
    targets = [torch.randint(0, 2, (b, *size)) for _ in range(k)]

    def make(params):
        if optimizer == "sgd":
            return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-5)
        # the convolution biases ahead of BatchNorm have a gradient of 0 up to rounding (about
        # 1e-9), which Adam's default eps of 1e-8 turns into steps of either sign: any two
        # implementations differ there. eps 1e-5 keeps the comparison about the maths
        return torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2, eps=1e-5)

    opts = [make(n.parameters()) for n in nets]
    fused_opt = make(fused.parameters())
    for step in range(2):  # two steps: the second uses the optimizer's state
        outs = [n(x, ts[j] if time_embedding else None) for j, (n, x) in enumerate(zip(nets, xs))]
        fused_out = fused.split(fused(torch.cat(xs, 1), ts))
        for o, f in zip(outs, fused_out):
            torch.testing.assert_close(f, o, atol=1e-5, rtol=1e-5)
        losses = [torch.nn.functional.cross_entropy(o, t) for o, t in zip(outs, targets)]
        for opt, loss in zip(opts, losses):
            opt.zero_grad()
            loss.backward()
        fused_opt.zero_grad()
        sum(torch.nn.functional.cross_entropy(o, t) for o, t in zip(fused_out, targets)).backward()
        for j, n in enumerate(nets):
            grads = fused.run_grads(j)
            for name, p in n.named_parameters():
                torch.testing.assert_close(grads[name], p.grad, atol=1e-5, rtol=1e-5, msg=f"grad {name}, step {step}")
        for opt in opts:
            opt.step()
        fused_opt.step()
        for j, n in enumerate(nets):
            tensors = fused.run_tensors(j)
            for name, value in n.state_dict().items():  # weights and BatchNorm's running statistics
                torch.testing.assert_close(tensors[name], value, atol=1e-5, rtol=1e-5, msg=f"{name}, step {step}")


def test_a_fused_run_loads_into_a_separate_network():
    torch.manual_seed(1)
    fused = FusedUNet(2, 1, 2, 4, 2, dropout=False, time_embedding=False)
    net = UNet(1, 2, 4, 2, dropout=False, time_embedding=False)
    net.load_state_dict(fused.run_tensors(1))
    x = torch.randn(1, 1, 16, 16)
    fused.eval(), net.eval()
    torch.testing.assert_close(net(x), fused.split(fused(torch.cat([torch.randn(1, 1, 16, 16), x], 1)))[1])
