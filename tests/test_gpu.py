"""The core on a CUDA device: every method's step under bf16 autocast and in fp32, GPU against CPU
numerics, a whole run on the GPU whose checkpoint scores the same on the CPU, 3D steps and
sliding-window inference on the GPU, and `diffseg bench` reading the CUDA allocator.

Skipped where no CUDA device is present (CI has none); run on a lent GPU machine with
``pytest -m gpu``. The checks are relative (fp32 against bf16, GPU against CPU), never timings."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffseg import cli, config
from diffseg.bench import run_bench
from diffseg.evaluate import slide
from diffseg.loop import train_step
from diffseg.methods import METHODS, Step, build_method
from diffseg.nets import UNet
from diffseg.runtime import Runtime

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _exact_fp32():
    """TF32 matrix products would make the fp32 comparisons below measure TF32's rounding."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def small(dataset: str = "synthetic", **extra):
    base = "debug3d" if dataset == "la" else "debug"
    sets = {"model.width": 8, "model.depth": 2, "diffusion_cps.diffusion.steps": 50, "diffusion_cps.diffusion.start_t": 49, "diffusion_cps.rounds": 2}
    if dataset != "la":
        sets |= {"data.size": 32}
    else:
        sets |= {"data.patch": [16, 16, 16]}
    return config.load(base, sets | extra)


def batch_for(cfg, device, b=4):
    g = torch.Generator().manual_seed(0)
    if cfg.data.dataset == "la":
        shape, channels = tuple(cfg.data.patch), 1
    else:
        shape, channels = (cfg.data.size, cfg.data.size), 3
    x = torch.randn(b, channels, *shape, generator=g).to(device)
    y = (torch.rand(b, *shape, generator=g) > 0.5).long().to(device)
    return {"labeled": {"image": x, "mask": y}, "unlabeled": {"image": x}, "images": {"image": x}}, channels


def steps_of(cfg, device, amp: bool, n: int = 3) -> tuple[list[float], list[torch.Tensor], list[torch.Tensor]]:
    """Losses of n steps of the method's last stage, and its parameters before and after."""
    rt = Runtime(device=device, amp=amp)
    batch, channels = batch_for(cfg, device)
    torch.manual_seed(0)
    method = build_method(cfg, channels, rt.prepare_model)
    method.train_mode(True)
    stage = METHODS[cfg.method].stages[-1]
    params = [p for o in stage.optimizers for g in method.optimizers[o].param_groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    losses = []
    for i in range(n):
        torch.manual_seed(100 + i)  # the same noise draws under both precisions
        terms = train_step(method, stage, batch, Step(0, i, n, 1), rt)
        losses.append(terms["loss"])
    return losses, before, [p.detach() for p in params]


@pytest.mark.parametrize("dataset", ["synthetic", "la"])
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_steps_on_cuda_in_bf16_close_to_fp32(name, dataset):
    cfg = small(dataset, method=name)
    fp32, before, after = steps_of(cfg, CUDA, amp=False)
    bf16, _, after_bf16 = steps_of(cfg, CUDA, amp=True)
    assert all(torch.isfinite(torch.tensor(v)) for v in fp32 + bf16), (fp32, bf16)
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "fp32 steps moved no parameter"
    assert any(not torch.equal(a, b) for a, b in zip(before, after_bf16)), "bf16 steps moved no parameter"
    # the same initial weights and batch: bf16's first loss within its ~3 significant digits
    # (plus the softmax/normalisation rounding of a whole forward pass) of fp32's
    assert bf16[0] == pytest.approx(fp32[0], rel=0.05, abs=0.02), (fp32, bf16)


@pytest.mark.parametrize("dims", [2, 3])
def test_unet_forward_on_cuda_matches_cpu_in_fp32(dims):
    torch.manual_seed(0)
    net = UNet(3, 2, width=8, depth=3, time_embedding=False, dims=dims).eval()
    x = torch.randn(2, 3, *((16,) * dims))
    with torch.no_grad():
        cpu = net(x)
        gpu = net.to(CUDA)(x.to(CUDA)).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-4, rtol=1e-4), (cpu - gpu).abs().max()


def test_run_on_cuda_scores_the_same_when_evaluated_on_cpu(tmp_path, capsys):
    """A checkpoint written on the GPU loads on a machine without one and scores the same there:
    evaluation draws the diffusion noise from a CPU generator, so only float rounding differs."""
    run = tmp_path / "run"
    sets = ["data.size=32", "data.synthetic_count=24", "model.width=8", "model.depth=2", "pretrain.epochs=1",
            "pretrain.iters_per_epoch=3", "train.epochs=2", "train.iters_per_epoch=3", "diffusion_cps.diffusion.steps=50",
            "diffusion_cps.diffusion.start_t=-1"]
    assert cli.main(["debug", "--device", "cuda", "--no-amp", "--run-dir", str(run), "--set", *sets]) == 0
    summary = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--split", "test", "--device", "cpu"]) == 0
    on_cpu = json.loads(capsys.readouterr().out)
    assert on_cpu["dice"] == pytest.approx(summary["test"]["dice"], abs=5e-3)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(images / f"{i}.png")
    for device in ("cuda", "cpu"):  # on CUDA under bf16 autocast, as predict runs there
        assert cli.main(["predict", str(run), "--input", str(images), "--output", str(tmp_path / device),
                         "--probabilities", "--device", device]) == 0
    for i in range(3):
        gpu, cpu = (np.array(Image.open(tmp_path / d / f"{i}_prob.png"), dtype=float) / 255 for d in ("cuda", "cpu"))
        assert np.abs(gpu - cpu).mean() < 0.01 and np.abs(gpu - cpu).max() < 0.1, (i, np.abs(gpu - cpu).max())


@pytest.mark.parametrize("overlap", [0.0, 0.5])
def test_sliding_window_on_cuda_reproduces_an_identity_model(overlap):
    x = torch.randn(1, 2, 37, 20, 29, device=CUDA)
    out = slide(lambda t: t, x, (16, 16, 16), overlap=overlap)
    assert out.device.type == "cuda"
    assert torch.allclose(out, x, atol=1e-5)


@pytest.mark.parametrize("amp", [False, True])
def test_bench_on_cuda_names_the_gpu_and_reads_the_allocator_peak(amp):
    result = run_bench(small(), steps=2, runtime=Runtime(device=CUDA, amp=amp), log=lambda m: None)
    assert result["hardware"]["gpu"] == torch.cuda.get_device_name(CUDA)
    assert result["amp"] is amp
    assert all(r["peak_memory_mb"] > 0 and r["steps_per_s"] > 0 for r in result["rows"])
