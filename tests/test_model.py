"""Network structure: the authors' key names and shapes, parameter counts, output shapes, the ART block."""

from __future__ import annotations

import json

import pytest
import torch

from pose.config import load_model_config
from pose.models.hrnet import AdaptiveBlock, create_model
from pose.ops import deform_conv3x3
from pose.ops.adaptive_conv import REGULAR_GRID, regular_grid

from .conftest import FIXTURES, ROOT, SHARED

REPO = ROOT / "model_repo"


def test_official_w32_keys_map_one_to_one_with_equal_shapes() -> None:
    keys_file = SHARED / "official_w32_coco_keys.json"
    if not keys_file.is_file():
        pytest.skip(f"{keys_file} not found")
    official = [(name, tuple(shape)) for name, shape in json.loads(keys_file.read_text())]
    ours = [
        (name, tuple(t.shape))
        for name, t in create_model(load_model_config(REPO / "hrnet_w32_coco_512")).state_dict().items()
    ]
    assert ours == official  # same names, same shapes, same order, nothing left over


@pytest.mark.parametrize(
    "name,keys,unique,total",
    [
        ("hrnet_w32_coco_512", 1914, 30_678_516, 30_779_703),
        ("hrnet_w48_coco_640", 1914, 66_803_428, 66_979_975),
        ("higher_hrnet_w48_coco_640", 1934, 66_895_941, 67_072_779),
        ("hrnet_w32_crowdpose_512", 1914, 30_676_107, None),
    ],
)
def test_parameter_counts_match_the_authors_models(name: str, keys: int, unique: int, total: int | None) -> None:
    """Counts from SPEC §1.5 (instantiated official classes); the paper's Table 1 rounds the unique ones."""
    model = create_model(load_model_config(REPO / name))
    state = model.state_dict()
    assert len(state) == keys
    assert sum(p.numel() for p in model.parameters()) == unique  # shared weights counted once
    if total is not None:
        assert sum(t.numel() for t in state.values()) == total


def test_heatmap_branches_share_conv_weights_but_not_biases_or_norms() -> None:
    model = create_model(load_model_config(REPO / "hrnet_w32_coco_512"))
    b0, b1, b2 = (branch[0] for branch in model.multi_level_layers_4x_heatmap)
    for name in ("transform_matrix_conv1", "transform_matrix_conv2", "stn_conv1", "stn_conv2"):
        assert getattr(b1, name).weight is getattr(b0, name).weight is getattr(b2, name).weight
    assert b1.transform_matrix_conv1.bias is not b0.transform_matrix_conv1.bias
    assert b1.bn1.weight is not b0.bn1.weight
    assert [b.stn_conv1.dilation for b in (b0, b1, b2)] == [1, 2, 3]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,size",
    [("hrnet_w32_coco_512", (512, 512)), ("hrnet_w32_coco_512", (512, 768)), ("hrnet_w48_coco_640", (512, 768))],
)
def test_random_weight_models_give_documented_output_shapes(name: str, size: tuple[int, int]) -> None:
    model = create_model(load_model_config(REPO / name)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    h, w = size[0] // 4, size[1] // 4
    assert out.heatmaps.shape == (1, 18, h, w)  # 17 keypoints + center (last)
    assert out.offsets.shape == (1, 34, h, w)  # (dx, dy) per joint
    assert out.heatmaps_2x is None


def test_higher_hrnet_adds_a_2x_heatmap_head() -> None:
    cfg = load_model_config(REPO / "higher_hrnet_w48_coco_640")
    small = cfg.architecture.model_copy(
        update={
            "stage2": cfg.architecture.stage2.model_copy(update={"num_blocks": [1, 1]}),
            "stage3": cfg.architecture.stage3.model_copy(update={"num_modules": 1, "num_blocks": [1, 1, 1]}),
            "stage4": cfg.architecture.stage4.model_copy(update={"num_modules": 1, "num_blocks": [1, 1, 1, 1]}),
        }
    )
    model = create_model(cfg.model_copy(update={"architecture": small})).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 192))
    assert out.heatmaps.shape == (1, 18, 32, 48)
    assert out.heatmaps_2x is not None and out.heatmaps_2x.shape == (1, 17, 64, 96)


def test_adaptive_block_equals_the_hand_written_formula() -> None:
    """out = ReLU(x + BN2(dconv(ReLU(BN1(dconv(x, off(T1 x)))), off(T2 x)))) with off(T) = T G - G."""
    torch.manual_seed(0)
    block = AdaptiveBlock(3, dilation=2).eval()
    for bn in (block.bn1, block.bn2):
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 3, 5, 6)

    def offsets(t: torch.Tensor) -> torch.Tensor:
        out = torch.empty(1, 18, 5, 6)
        for k in range(9):
            gy, gx = k // 3 - 1, k % 3 - 1
            out[:, 2 * k] = t[:, 0] * gy + t[:, 1] * gx - gy
            out[:, 2 * k + 1] = t[:, 2] * gy + t[:, 3] * gx - gx
        return out

    with torch.no_grad():
        y = torch.relu(
            block.bn1(deform_conv3x3(x, offsets(block.transform_matrix_conv1(x)), block.stn_conv1.weight, 2))
        )
        y = block.bn2(deform_conv3x3(y, offsets(block.transform_matrix_conv2(x)), block.stn_conv2.weight, 2))
        torch.testing.assert_close(block(x), torch.relu(y + x))


@pytest.mark.parametrize("name", ["hrnet_w32_coco_512", "higher_hrnet_w48_coco_640"])
def test_forward_makes_no_host_device_copies(name: str) -> None:
    """CUDA-graph capture needs a forward that only touches its inputs, parameters and buffers.

    Fake tensors hold no data: any real tensor the forward reaches for (a module-level constant copied to
    the device, say) raises here, on a CPU. The full-size networks cost nothing this way.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.func import functional_call

    with torch.device("meta"):
        model = create_model(load_model_config(REPO / name)).eval()
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    with FakeTensorMode(allow_non_fake_inputs=False):
        fake = {key: torch.empty(t.shape, dtype=t.dtype) for key, t in tensors.items()}
        out = functional_call(model, fake, (torch.empty(2, 3, 512, 512),))
    assert tuple(out.heatmaps.shape) == (2, 18, 128, 128)
    assert tuple(out.offsets.shape) == (2, 34, 128, 128)


def test_forward_compiles_to_one_graph() -> None:
    """No graph breaks: torch.compile and CUDA graphs see the whole network at once."""
    import torch._dynamo

    model = create_model(load_model_config(FIXTURES / "tiny_coco_w8_256.yaml")).eval()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(torch.randn(1, 3, 64, 64))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_regular_grid_is_built_on_the_device_and_equals_the_constant() -> None:
    like = torch.empty(0, dtype=torch.float64)
    assert torch.equal(regular_grid(like), REGULAR_GRID.double())
