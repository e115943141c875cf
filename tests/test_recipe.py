import math

import pytest
import torch
from torchvision.transforms import v2

from helpers.recipe import augment_batch, make_loss, make_scheduler, lovasz_hinge_loss, soft_dice_loss


def blobs(n=8, size=32, seed=0):
    """n masks, each one random rectangle, and images equal to their masks on 3 channels."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 1, size, size)
    for i in range(n):
        top, left = torch.randint(0, size // 2, (2,), generator=g).tolist()
        h, w = torch.randint(4, size // 2, (2,), generator=g).tolist()
        masks[i, 0, top:top + h, left:left + w] = 1
    return masks.repeat(1, 3, 1, 1), masks


def iou(a, b):
    return ((a & b).sum() / (a | b).sum()).item()


def test_flips_and_rot90_match_torch_per_sample_and_keep_image_and_mask_aligned():
    images, masks = blobs()
    images = images * torch.linspace(0.2, 1, 32)  # asymmetric content, so every transform shows
    out, out_masks = augment_batch(images, masks, torch.Generator().manual_seed(1), scale=None, jitter=None)
    u = torch.rand(8, 10, generator=torch.Generator().manual_seed(1))  # the draws augment_batch made
    for i in range(8):
        x = images[i]
        x = x.flip(-1) if u[i, 0] < 0.5 else x
        x = x.flip(-2) if u[i, 1] < 0.5 else x
        assert torch.equal(out[i], torch.rot90(x, int(u[i, 2] * 4), dims=(-2, -1)))
    assert torch.equal((out > 0).all(1, keepdim=True).float(), out_masks)


def test_each_sample_gets_its_own_draw():
    images, masks = blobs(n=1)
    images, masks = images.repeat(8, 1, 1, 1), masks.repeat(8, 1, 1, 1)
    out, _ = augment_batch(images, masks, torch.Generator().manual_seed(0))
    assert all(not torch.equal(out[i], out[j]) for i in range(8) for j in range(i))


def test_rot90_alone_only_rotates():
    images, masks = blobs(n=16)
    out, out_masks = augment_batch(images, masks, torch.Generator().manual_seed(2), flips=False, scale=None,
                                   jitter=None)
    for x, m in zip(out_masks, masks):
        assert any(torch.equal(x, torch.rot90(m, k, dims=(-2, -1))) for k in range(4))


def test_scale_and_crop_keeps_image_and_mask_aligned():
    images, masks = blobs(n=16, size=64)
    out, out_masks = augment_batch(images, masks, torch.Generator().manual_seed(3), flips=False, rot90=False,
                                   scale=(0.75, 1.25), jitter=None)
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(out_masks, masks)  # something moved
    for x, m in zip(out, out_masks):
        assert iou(x.mean(0, keepdim=True) > 0.5, m > 0.5) > 0.98


def test_scale_one_is_the_identity():
    images, masks = blobs()
    out, out_masks = augment_batch(images, masks, torch.Generator().manual_seed(0), flips=False, rot90=False,
                                   scale=(1.0, 1.0), jitter=None)
    assert torch.allclose(out, images, atol=1e-6) and torch.equal(out_masks, masks)


def test_zoom_in_and_out():
    images, masks = torch.ones(2, 3, 32, 32), torch.ones(2, 1, 32, 32)
    out, out_masks = augment_batch(images, masks, torch.Generator().manual_seed(0), flips=False, rot90=False,
                                   scale=(0.5, 0.5), jitter=None)  # zoom out by 2: the image fills half the side
    assert out_masks.mean().item() == pytest.approx(0.25, abs=0.02) and out[:, :, 0, 0].eq(0).all()
    out, out_masks = augment_batch(images, masks, torch.Generator().manual_seed(0), flips=False, rot90=False,
                                   scale=(2.0, 2.0), jitter=None)  # zoom in: the view stays inside
    assert out_masks.eq(1).all() and torch.allclose(out, images)


def test_jitter_changes_images_per_sample_and_never_masks():
    images = torch.rand(1, 3, 16, 16).repeat(8, 1, 1, 1)
    masks = (torch.rand(1, 1, 16, 16) > 0.5).float().repeat(8, 1, 1, 1)
    out, out_masks = augment_batch(images, masks, torch.Generator().manual_seed(4), flips=False, rot90=False,
                                   scale=None, jitter=(0.3, 0.3, 0.3, 0.1))
    assert torch.equal(out_masks, masks)
    assert out.min() >= 0 and out.max() <= 1
    assert all(not torch.allclose(out[0], out[i]) for i in range(1, 8))  # one draw per sample


U = torch.rand(1, 10, generator=torch.Generator().manual_seed(5))[0, 6:]  # the jitter draws of seed 5


def GREY(x):
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


@pytest.mark.parametrize("factors, expected", [
    ((0.5, 0, 0, 0), lambda x: x * (1 + 0.5 * (2 * U[0] - 1))),  # brightness only
    ((0, 0.5, 0, 0), lambda x: GREY(x).mean() + (x - GREY(x).mean()) * (1 + 0.5 * (2 * U[1] - 1))),  # contrast
    ((0, 0, 0.5, 0), lambda x: GREY(x) + (x - GREY(x)) * (1 + 0.5 * (2 * U[2] - 1))),  # saturation only
])
def test_jitter_components_by_hand(factors, expected):
    x = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    out, _ = augment_batch(x, torch.zeros(1, 1, 2, 2), torch.Generator().manual_seed(5), flips=False, rot90=False,
                           scale=None, jitter=factors)
    assert torch.allclose(out, expected(x).clamp(0, 1), atol=1e-5)


def test_contrast_and_hue_keep_greys_and_hue_keeps_luma():
    grey = torch.full((4, 3, 4, 4), 0.5)
    out, _ = augment_batch(grey, torch.zeros(4, 1, 4, 4), torch.Generator().manual_seed(6), flips=False,
                           rot90=False, scale=None, jitter=(0, 0.5, 0.5, 0.5))
    assert torch.allclose(out, grey, atol=1e-6)  # a flat grey image is a fixed point of all three
    colour = torch.tensor([0.3, 0.5, 0.4]).view(1, 3, 1, 1).expand(4, 3, 4, 4)
    out, _ = augment_batch(colour, torch.zeros(4, 1, 4, 4), torch.Generator().manual_seed(6), flips=False,
                           rot90=False, scale=None, jitter=(0, 0, 0, 0.5))
    assert torch.allclose(GREY(out), GREY(colour), atol=1e-5) and not torch.allclose(out, colour)


def test_same_seed_same_output_and_inputs_untouched():
    images, masks = blobs()
    before = images.clone(), masks.clone()
    a = augment_batch(images, masks, torch.Generator().manual_seed(7))
    b = augment_batch(images, masks, torch.Generator().manual_seed(7))
    c = augment_batch(images, masks, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    assert torch.equal(images, before[0]) and torch.equal(masks, before[1])


def test_switching_an_ingredient_off_keeps_the_others_draws():
    images, masks = blobs()
    both = augment_batch(images, masks, torch.Generator().manual_seed(9), scale=None)
    geometry = augment_batch(images, masks, torch.Generator().manual_seed(9), scale=None, jitter=None)
    assert torch.equal(both[1], geometry[1])


def test_rejects_non_square_or_wrong_channels():
    with pytest.raises(ValueError, match="B x 3 x S x S"):
        augment_batch(torch.zeros(2, 3, 8, 6), torch.zeros(2, 1, 8, 6), torch.Generator())


def test_torchvision_v2_draws_one_set_of_parameters_per_batched_call():
    torch.manual_seed(0)
    batch = torch.rand(1, 3, 16, 16).repeat(8, 1, 1, 1)
    for transform in (v2.ColorJitter(0.5, 0.5, 0.5, 0.1), v2.RandomResizedCrop(16), v2.RandomRotation(30)):
        out = transform(batch)
        assert all(torch.equal(out[0], o) for o in out)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_runs_on_cuda_with_a_cuda_generator():
    images, masks = blobs()
    out, out_masks = augment_batch(images.cuda(), masks.cuda(), torch.Generator(device="cuda").manual_seed(0))
    assert out.is_cuda and out_masks.is_cuda and set(out_masks.unique().tolist()) <= {0.0, 1.0}


def test_soft_dice_loss_by_hand():
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[1.0, 1.0], [0.0, 0.0]]]])  # 2 x 1 x 2 x 2
    assert soft_dice_loss((2 * target - 1) * 50, target, eps=0).item() == pytest.approx(0, abs=1e-6)  # perfect
    assert soft_dice_loss((1 - 2 * target) * 50, target, eps=0).item() == pytest.approx(1, abs=1e-6)  # all wrong
    # logits 0: p = 1/2 everywhere; image 1: 2 * 0.5 / (2 + 1) = 1/3, image 2: 2 * 1 / (2 + 2) = 1/2
    assert soft_dice_loss(torch.zeros(2, 1, 2, 2), target, eps=0).item() == pytest.approx(1 - (1 / 3 + 1 / 2) / 2)
    empty = torch.zeros(1, 1, 2, 2)
    assert soft_dice_loss(torch.full((1, 1, 2, 2), -50.0), empty).item() == pytest.approx(0, abs=1e-6)  # eps


def test_lovasz_hinge_is_the_jaccard_loss_at_hard_predictions():
    torch.manual_seed(0)
    target = (torch.rand(4, 1, 6, 6) > 0.5).float()
    assert lovasz_hinge_loss((2 * target - 1) * 3, target).item() == 0  # right with a margin of 1 or more
    # logits +-1: hinge errors are 0 (right) or 2 (wrong), and the Lovasz extension of 2 x a set is
    # 2 x the Jaccard loss of that set, image by image
    logits = torch.randn(4, 1, 6, 6).sign()
    pred, truth = logits > 0, target.bool()
    jaccard = (pred & truth).flatten(1).sum(1) / (pred | truth).flatten(1).sum(1)
    assert lovasz_hinge_loss(logits, target).item() == pytest.approx((2 * (1 - jaccard)).mean().item())
    # an empty truth weighs its worst pixel only
    empty = torch.zeros(1, 1, 2, 2)
    assert lovasz_hinge_loss(torch.tensor([-3.0, 0.5, -1.0, 0.0]).view(1, 1, 2, 2), empty).item() == 1.5


def test_lovasz_hinge_gradient_pushes_wrong_pixels():
    target = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 2, 2)
    logits = torch.tensor([2.0, -0.5, 0.5, -2.0]).view(1, 1, 2, 2).requires_grad_()
    lovasz_hinge_loss(logits, target).backward()
    grad = logits.grad.flatten()
    assert grad[1] < 0 and grad[2] > 0  # the missed lesion pixel goes up, the false positive down
    assert grad[0] == 0 and grad[3] == 0  # right with a margin: no gradient


def test_make_loss():
    logits, target = torch.zeros(2, 1, 2, 2), torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0]).view(2, 1, 2, 2)
    assert make_loss("bce")(logits, target).item() == pytest.approx(math.log(2))
    assert make_loss("bce_dice")(logits, target).item() == pytest.approx(math.log(2) + 1 - (2 / 4 + 3 / 5) / 2)
    bce_lovasz = make_loss("bce_lovasz")(logits, target).item()
    assert bce_lovasz == pytest.approx(math.log(2) + lovasz_hinge_loss(logits, target).item())
    with pytest.raises(ValueError, match="bce, bce_dice, bce_lovasz"):
        make_loss("dice")


def lrs(name, steps, **kw):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = make_scheduler(optimizer, name, **kw)
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out + [optimizer.param_groups[0]["lr"]]  # the lr after the last step too


def test_constant_schedule_is_none():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    assert make_scheduler(optimizer, "constant", epochs=3, steps_per_epoch=4) is None


def test_cosine_schedule_warms_up_then_decays_to_zero():
    lr = lrs("cosine", 12, epochs=3, steps_per_epoch=4, warmup_epochs=1)  # W = 4, T = 12
    assert lr[0] == pytest.approx(0.025) and lr[3] == pytest.approx(0.1)  # step 0, end of warm-up
    assert lr[4] == pytest.approx(0.1) and lr[8] == pytest.approx(0.05)  # cosine: half way at step 8
    assert lr[11] == pytest.approx(0.05 * (1 + math.cos(math.pi * 7 / 8))) and lr[12] == pytest.approx(0)
    assert all(a >= b for a, b in zip(lr[4:], lr[5:]))
    assert lrs("cosine", 2, epochs=2, steps_per_epoch=1, warmup_epochs=0)[:2] == pytest.approx([0.1, 0.05])


def test_onecycle_schedule():
    lr = lrs("onecycle", 12, epochs=3, steps_per_epoch=4, warmup_epochs=1)
    assert lr[0] == pytest.approx(0.1 / 25) and lr[3] == pytest.approx(0.1)  # peak at the end of the warm-up
    assert lr[11] == pytest.approx(0.1 / 25 / 1e4)
    with pytest.raises(ValueError, match="warmup_epochs >= 1"):
        lrs("onecycle", 1, epochs=3, steps_per_epoch=4, warmup_epochs=0)


def test_schedule_rejects_bad_settings():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="constant, cosine, onecycle"):
        make_scheduler(optimizer, "step", epochs=3, steps_per_epoch=4)
    with pytest.raises(ValueError, match="warmup_epochs < epochs"):
        make_scheduler(optimizer, "cosine", epochs=1, steps_per_epoch=4, warmup_epochs=1)


def test_rotate_off_draws_what_it_always_drew():
    images, masks = blobs()
    default = augment_batch(images, masks, torch.Generator().manual_seed(11))
    off = augment_batch(images, masks, torch.Generator().manual_seed(11), rotate=0.0)
    assert torch.equal(default[0], off[0]) and torch.equal(default[1], off[1])


def test_rotate_turns_each_sample_by_its_own_angle_within_the_bound():
    size, n, bound = 65, 16, 30.0
    masks = torch.zeros(n, 1, size, size)
    masks[:, 0, 30:35, 50:56] = 1  # a small square right of the centre, the same in every sample
    out_images, out_masks = augment_batch(masks.repeat(1, 3, 1, 1), masks, torch.Generator().manual_seed(3),
                                          flips=False, rot90=False, scale=None, jitter=None, rotate=bound)
    g = torch.Generator().manual_seed(3)
    torch.rand(n, 10, generator=g)  # the ten draws every call makes, then the angles
    expected = bound * (2 * torch.rand(n, generator=g) - 1)
    ys, xs = torch.meshgrid(torch.arange(size) - size // 2, torch.arange(size) - size // 2, indexing="ij")
    angles = []
    for m in out_masks[:, 0]:
        assert m.sum() > 0 and set(m.unique().tolist()) <= {0.0, 1.0}
        cy, cx = (ys * m).sum() / m.sum(), (xs * m).sum() / m.sum()
        angles.append(math.degrees(math.atan2(cy, cx)))  # where the square's centre went
    turned = torch.tensor(angles) - math.degrees(math.atan2(32 - 32, 52.5 - 32))
    assert torch.allclose(turned.abs(), expected.abs(), atol=3.0)  # the drawn angle, to a pixel's rounding
    assert turned.abs().max() <= bound + 3 and turned.abs().max() > bound / 2  # within the bound, and not all tiny
    assert torch.equal(out_images[:, :1] > 0.5, out_masks > 0.5)  # image and mask turned together


def test_rotate_rejects_a_negative_angle():
    with pytest.raises(ValueError, match="rotate"):
        augment_batch(*blobs(), torch.Generator(), rotate=-5.0)
