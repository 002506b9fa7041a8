"""The method's pieces: diffusion process, networks, gradient paths, the Ray-free core."""
import subprocess
import sys

import pytest
import torch

from diffseg import config, losses
from diffseg.diffusion import Diffusion, make_betas
from diffseg.errors import ConfigError
from diffseg.loop import lr_at
from diffseg.methods import Step, build_method
from diffseg.methods.diffusion_cps.network import DiffusionSegmenter, build_student, build_teacher
from diffseg.methods.diffusion_cps.objectives import cycle_loss, mask_scores, rounds
from diffseg.timm_unet import TimmUNet


def teacher_of(cfg):
    return build_teacher(cfg.model, 3, 2)


def student_of(cfg):
    return build_student(cfg.model, 3, 2)


def scores_of(net, x, d, cfg):
    s = cfg.diffusion_cps.diffusion
    return mask_scores(net, d, x, s.sample_steps, s.start_t)


@pytest.mark.parametrize("schedule", ["sigmoid", "linear", "cosine"])
def test_schedules_decrease_signal(schedule):
    d = Diffusion(200, schedule)
    abar = d.sqrt_abar ** 2
    assert abar.shape == (200,) and (abar[1:] <= abar[:-1] + 1e-7).all()
    assert abar[0] > 0.9 and abar[-1] < 0.1
    assert (make_betas(schedule, 200) > 0).all()


def test_q_sample_and_conversions_invert():
    torch.manual_seed(0)
    d = Diffusion(100, "sigmoid")
    x0, eps = torch.randn(4, 2, 8, 8), torch.randn(4, 2, 8, 8)
    t = torch.tensor([0, 10, 50, 99])
    zt = d.q_sample(x0, t, eps)
    assert torch.allclose(d.x0_from_eps(zt, t, eps), x0, atol=1e-3)
    assert torch.allclose(d.eps_from_x0(zt, t, x0), eps, atol=1e-3)
    big = d.q_sample(torch.zeros(20000), torch.full((20000,), 99), None)
    assert abs(float(big.std()) - float(d.sqrt_one_minus_abar[99])) < 0.02


def test_predict_mask_shapes_steps_and_fixed_start():
    torch.manual_seed(0)
    d = Diffusion(50)
    calls = []

    def net(y_t, x, t):
        calls.append(t.clone())
        return torch.zeros_like(y_t)

    x = torch.randn(3, 3, 16, 16)
    assert d.predict_mask(net, x, 2, 1, -1).shape == (3, 2, 16, 16) and len(calls) == 1
    calls.clear()
    d.predict_mask(net, x, 2, 4, 40)
    assert [c.tolist() for c in calls] == [[40] * 3, [30] * 3, [20] * 3, [10] * 3]


def test_network_shapes_and_student_kinds(tiny_cfg):
    teacher = teacher_of(tiny_cfg)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([1, 5])
    assert teacher.mask(torch.randn(2, 2, 32, 32), x, t).shape == (2, 2, 32, 32)
    assert teacher.image(torch.randn(2, 3, 32, 32), torch.rand(2, 2, 32, 32), t).shape == (2, 3, 32, 32)
    twin = student_of(tiny_cfg)
    assert twin.image is None  # only the mask pathway is used by a student
    paper = DiffusionSegmenter(3, 2, 64, 4)
    widths = [m.out_channels for m in paper.mask.net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert max(widths) == 512 and widths[0] == 64


def test_timm_student_and_local_weights(tiny_cfg, tmp_path):
    cfg = config.apply_overrides(tiny_cfg, {"model.arch": "timm", "model.timm_encoder": "resnet10t"})
    student = student_of(cfg)
    assert isinstance(student, TimmUNet) and student(torch.randn(2, 3, 32, 32)).shape == (2, 2, 32, 32)
    weights = tmp_path / "enc.pt"
    torch.save({k: torch.full_like(v, 0.5) if v.is_floating_point() else v
                for k, v in student.encoder.state_dict().items()}, weights)
    loaded = student_of(config.apply_overrides(cfg, {"model.timm_weights": str(weights)}))
    assert float(next(loaded.encoder.parameters()).detach().flatten()[0]) == 0.5
    with pytest.raises(ConfigError, match="timm_weights file not found"):
        student_of(config.apply_overrides(cfg, {"model.timm_weights": str(tmp_path / "nope.pt")}))
    with pytest.raises(ConfigError, match="timm_encoder"):
        student_of(config.apply_overrides(cfg, {"model.timm_encoder": "not_a_model"}))


def test_stage1_gradient_reaches_mask_pathway_through_conditioning(tiny_cfg):
    torch.manual_seed(0)
    teacher = teacher_of(tiny_cfg)
    cycle_loss(teacher, Diffusion(50), torch.randn(2, 3, 32, 32)).backward()
    mask_grad = sum(float(p.grad.abs().sum()) for p in teacher.mask.parameters() if p.grad is not None)
    image_grad = sum(float(p.grad.abs().sum()) for p in teacher.image.parameters() if p.grad is not None)
    assert mask_grad > 0 and image_grad > 0


def test_cps_targets_carry_no_gradient(tiny_cfg):
    torch.manual_seed(0)
    teacher, student = teacher_of(tiny_cfg), student_of(tiny_cfg)
    d, x = Diffusion(50), torch.randn(2, 3, 32, 32)
    pt, ps = scores_of(teacher, x, d, tiny_cfg), scores_of(student, x, d, tiny_cfg)
    target = losses.hard(pt)
    assert not target.requires_grad and set(target.unique().tolist()) <= {0.0, 1.0}
    losses.dice_loss(ps, target).backward()  # student learns from the teacher's label...
    assert all(p.grad is None for p in teacher.parameters())  # ...and the label sends nothing back
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


@pytest.mark.parametrize("mode", ["independent", "chained"])
def test_round_conditioning(tiny_cfg, mode):
    torch.manual_seed(0)
    teacher = teacher_of(tiny_cfg)
    seen = []
    original = teacher.image.forward
    teacher.image.forward = lambda x_t, m, t: (seen.append(m), original(x_t, m, t))[1]
    d, x = Diffusion(50), torch.randn(2, 3, 32, 32)
    first = scores_of(teacher, x, d, tiny_cfg)
    s = tiny_cfg.diffusion_cps.diffusion
    segs, recs = rounds(teacher, d, x, first, 3, mode, s.sample_steps, s.start_t)
    assert len(segs) == len(recs) == 3 and all(not m.requires_grad for m in seen)
    assert torch.equal(seen[0], first.detach())
    if mode == "chained":  # round j is conditioned on round j - 1's mask
        assert torch.equal(seen[1], segs[0].detach()) and torch.equal(seen[2], segs[1].detach())
    else:
        assert all(torch.equal(m, first.detach()) for m in seen)


def test_cotrain_loss_trains_both_networks_and_logs_terms(tiny_cfg):
    torch.manual_seed(0)
    method = build_method(tiny_cfg, 3)
    teacher, student = method.networks["teacher"], method.networks["student"]
    x, y = torch.randn(2, 3, 32, 32), (torch.rand(2, 32, 32) > 0.5).long()
    loss, terms = method.cotrain_loss(x, y, x, Step(0, 0, 2, tiny_cfg.train.epochs))
    loss.backward()
    for net in (teacher.mask, teacher.image, student.mask):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert {"cps", "align_u", "rec_u", "sup_student", "sup_teacher", "align_l", "rec_l", "lambda_u"} <= set(terms)
    assert terms["lambda_u"] == pytest.approx(1 / tiny_cfg.train.epochs)


def test_learning_rate_schedule():
    stage = config.load("glas").train
    assert lr_at(stage, 0) == pytest.approx(0.01 / 20) and lr_at(stage, 19) == pytest.approx(0.01)
    assert lr_at(stage, 69) == pytest.approx(0.01) and lr_at(stage, 70) == pytest.approx(0.005)


def test_core_imports_with_ray_and_optuna_blocked():
    code = (
        "import sys, pkgutil, importlib\n"
        "sys.modules['ray'] = None\nsys.modules['optuna'] = None\n"
        "import diffseg\n"
        "names = [m.name for m in pkgutil.walk_packages(diffseg.__path__, 'diffseg.')]\n"
        "[importlib.import_module(n) for n in names if not n.endswith('__main__')]\n"
        "assert 'diffseg.loop' in names and 'diffseg.methods.cps' in names and 'diffseg.cli' in names, names\n"
        "print(len(names))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 15
