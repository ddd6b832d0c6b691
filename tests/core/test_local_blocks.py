"""The token–patch local objective computed in blocks of images (never the whole [B, B, L, N] tensor): same loss and
same gradients as in one block."""

import pytest
import torch
import torch.nn.functional as F

from elvis_core.training.objectives import LocalTokenPatch


@pytest.mark.parametrize("aggregation", ["lse", "mean"])
def test_blocked_local_scores_equal_one_block(aggregation):
    g = torch.Generator().manual_seed(0)
    b, gh, gw, length, d = 6, 3, 3, 5, 8
    patches = F.normalize(torch.randn(b, gh, gw, d, generator=g), dim=-1).requires_grad_()
    tokens = F.normalize(torch.randn(b, length, d, generator=g), dim=-1).requires_grad_()
    mask = torch.ones(b, length, dtype=torch.long)
    mask[0, 3:] = 0
    mask[4, 1:] = 0

    def run(block_elements):
        obj = LocalTokenPatch(temperature=0.1, attn_temperature=0.1, aggregation=aggregation)
        obj.block_elements = block_elements
        loss = obj(patches, tokens, mask)
        gp, gt = torch.autograd.grad(loss, (patches, tokens))
        return loss.detach(), gp, gt, obj.pair_scores(patches.detach(), tokens.detach(), mask)

    whole = run(1 << 30)
    per_image = b * length * gh * gw
    for block in (per_image, 2 * per_image + 7, 1):  # 1 image per block, 2 per block (uneven tail), 1 (floor: 1)
        blocked = run(block)
        torch.testing.assert_close(blocked[0], whole[0], rtol=1e-6, atol=1e-7)
        # token gradients are summed over the blocks: float rounding of a different summation order only
        torch.testing.assert_close(blocked[1], whole[1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(blocked[2], whole[2], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(blocked[3], whole[3], rtol=1e-6, atol=1e-7)


def test_block_size_at_training_sizes():
    """L = 128 tokens, N = 256 patches: one block up to B = 32 (nothing recomputed), 2 blocks at B = 64, 8 at
    B = 128 (where the whole tensor would be 2 GiB in fp32, plus its softmax and the context)."""
    obj = LocalTokenPatch()
    for b, blocks in ((32, 1), (64, 2), (128, 8)):
        rows = obj.block_elements // (b * 128 * 256)
        assert -(-b // min(rows, b)) == blocks
