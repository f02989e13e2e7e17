"""Residual adapters on a CNN (Rebuffi et al. 2017, 2018) beyond the generic checks of the method
table: the papers' modules computed by hand, the base's BatchNorms in eval mode while adapters
train, per-sample routing of a mixed-domain batch, domains kept apart, saved keys, refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from method_table import NUM_LABELS, default_head, perturb, train_and_check_isolation
from safetensors.torch import load_file
from tiny_models import adamw_steps, tiny_base, tiny_images

from adapterkit import AdapterModel, Parallel, Routed
from adapterkit.methods.conv_lora import ConvLoraDelta
from adapterkit.methods.lora import LoraConfig

ATOL = 1e-5


def cnn(*adapters: tuple[str, str, dict]) -> AdapterModel:
    model = AdapterModel(tiny_base("cnn"))
    for k, (name, method, options) in enumerate(adapters):
        model.add_adapter(name, method, default_head(), **options)
        perturb(model, name, seed=10 + k)
    return model.eval()


def bn(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)


def block_input(model: AdapterModel, images: dict) -> torch.Tensor:
    seen = {}
    handle = model.base.blocks[1].register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    with torch.no_grad():
        model.body(**images)
    handle.remove()
    return seen["x"]


def adapted_block_one(method: str):
    """A tiny CNN with adapter "a" of ``method`` in block 1 only, tiny images, block 1's input
    ``x``, the block, the adapter's modules there, and ``h``: the block's conv1 through the
    domain's own BatchNorm (both methods make it domain-specific)."""
    model = cnn(("a", method, {"layers": [1]}))
    images = tiny_images()
    x, block = block_input(model, images), model.base.blocks[1]
    mods = model.adapters["a"].layers["1"]
    with torch.no_grad():
        h = torch.relu(bn(mods["conv1_norm"].norm, block.conv1(x)))
    return model, images, x, block, mods, h


def test_series_adapter_is_bn_d_of_x_plus_alpha_bn_a_x():
    """Rebuffi et al. 2017, Fig. 2: after block 1's conv2, BN_d(c + α * BN_a(c)); its
    bn1 is domain-specific too."""
    model, images, x, block, mods, h = adapted_block_one("residual")
    with torch.no_grad():
        c = block.conv2(h)
        z = c + F.conv2d(bn(mods["conv2_norm"].inner, c), mods["conv2_norm"].alpha[:, :, None, None])
        expected = torch.relu(bn(mods["conv2_norm"].norm, z) + block.shortcut(x))
        with model.using("a"):
            got = model.body(**images).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_parallel_adapter_is_bn_d_of_the_convolutions_plus_a_strided_1x1_of_the_block_input():
    """Rebuffi et al. 2018 (parallel adapters): BN_d(W * x + α * x), α a 1x1 convolution of the block's input at
    the block's stride (2 here)."""
    model, images, x, block, mods, h = adapted_block_one("residual_parallel")
    with torch.no_grad():
        z = block.conv2(h) + F.conv2d(x, mods["block"].alpha[:, :, None, None], stride=2)
        expected = torch.relu(bn(mods["conv2_norm"].norm, z) + block.shortcut(x))
        with model.using("a"):
            got = model.body(**images).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_base_batchnorms_stay_in_eval_mode_while_an_adapter_trains():
    model = cnn(("a", "residual", {}), ("b", "residual_parallel", {}))
    model.train_adapter("a")
    model.train()
    norms = lambda module: [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]  # noqa: E731
    assert norms(model.base) and not any(m.training for m in norms(model.base))
    assert all(m.training for m in norms(model.adapters["a"]))  # the domain's own: batch statistics
    assert not any(m.training for m in norms(model.adapters["b"]))  # another domain's: kept
    base_stats = {k: v.clone() for k, v in model.base.state_dict().items()}
    own_before = {k: v.clone() for k, v in model.adapter_state("a").buffers.items()}
    model(**tiny_images(), labels=torch.tensor([0, 1, 2])).loss.backward()
    assert all(torch.equal(v, base_stats[k]) for k, v in model.base.state_dict().items())
    moved = [k for k, v in model.adapter_state("a").buffers.items() if not torch.equal(v, own_before[k])]
    assert any(k.endswith("running_mean") for k in moved)


def test_full_fine_tuning_of_a_cnn_trains_its_batchnorms_and_saves_their_statistics(tmp_path):
    model = AdapterModel(tiny_base("cnn"))
    model.add_adapter("f", "full", default_head())
    model.train_adapter("f")
    model.train()
    assert all(m.training for m in model.base.modules() if isinstance(m, torch.nn.BatchNorm2d))
    buffers = model.adapter_state("f").buffers
    assert "base.blocks.0.bn1.running_mean" in buffers and "base.stem_bn.running_var" in buffers
    model(**tiny_images(), labels=torch.tensor([0, 1, 2])).loss.backward()
    model.eval().save_adapter("f", tmp_path / "f")
    assert "base.blocks.1.bn2.num_batches_tracked" in load_file(str(tmp_path / "f" / "adapter.safetensors"))


@pytest.mark.parametrize("rows", [["a", "l", None, "p", "a", "t"], ["p", "p", "a"]])
def test_routed_mixed_domain_batch_equals_separate_runs_in_eval_mode(rows):
    model = cnn(("a", "residual", {}), ("p", "residual_parallel", {}), ("l", "lora", {"r": 2, "targets": ["conv1", "conv2"]}),
                ("t", "bitfit", {}))  # fmt: skip
    images = tiny_images(batch=len(rows))
    with torch.no_grad():
        out = model(**images, adapters=Routed(rows))
        for r, name in enumerate(rows):
            single = {"pixel_values": images["pixel_values"][r : r + 1]}
            if name is None:
                torch.testing.assert_close(out.last_hidden_state[r : r + 1], model.body(**single).last_hidden_state)
                continue
            position = (out.rows[name] == r).nonzero().item()
            torch.testing.assert_close(out[name].logits[position], model(**single, adapters=name).logits[0], rtol=0, atol=ATOL)


def test_routed_training_uses_each_domains_own_batch_statistics():
    """In train mode each domain's BatchNorms normalise over that domain's rows only: a routed
    step gives every row the output, and every adapter the running statistics, of separate runs."""
    rows = ["a", "b", "a", "b", "b"]
    images = tiny_images(batch=len(rows))
    labels = torch.tensor([0, 1, 2, 0, 1])

    def trained_model():
        model = cnn(("a", "residual", {}), ("b", "residual_parallel", {}))
        model.requires_grad_(False)
        for name in "ab":
            for p in model.adapter_parameters(name).values():
                p.requires_grad_(True)
        return model.train()

    routed, separate = trained_model(), trained_model()
    out = routed(**images, adapters=Routed(rows), labels=labels)
    for name in "ab":
        picked = torch.tensor([r for r, n in enumerate(rows) if n == name])
        alone = separate(pixel_values=images["pixel_values"][picked], adapters=name).logits
        torch.testing.assert_close(out[name].logits, alone, rtol=0, atol=ATOL)
        for key, value in separate.adapter_state(name).buffers.items():
            torch.testing.assert_close(routed.adapter_state(name).buffers[key], value, rtol=0, atol=ATOL)
    out.loss.backward()
    assert all(p.grad is not None for n in "ab" for p in routed.adapter_parameters(n).values())


def test_parallel_domains_on_one_batch_equal_separate_runs():
    model = cnn(("a", "residual", {}), ("p", "residual_parallel", {}), ("l", "lora", {"r": 2, "targets": ["conv2"]}))
    images = tiny_images()
    with torch.no_grad():
        out = model(**images, adapters=Parallel("a", "p", "l"))
        for name in "apl":
            torch.testing.assert_close(out[name].logits, model(**images, adapters=name).logits, rtol=0, atol=ATOL)


def test_a_second_domain_leaves_the_first_bit_identical():
    images, labels = tiny_images(), torch.arange(3) % NUM_LABELS
    model = cnn(("first", "residual", {}))
    model.train_adapter("first")
    model.train()
    adamw_steps(model, images, labels, 2)
    model.eval()
    model.add_adapter("task", "residual", default_head())  # the second domain
    model.eval()
    first_state = {k: v.clone() for k, v in model.adapter_state("first").tensors().items()}
    train_and_check_isolation(model, images, others=["first"])  # its logits bit-identical after training "task"
    assert all(torch.equal(v, first_state[k]) for k, v in model.adapter_state("first").tensors().items())


def test_saved_keys_of_residual_adapters(tmp_path):
    model = cnn(("s", "residual", {}), ("p", "residual_parallel", {}))
    model.save_adapter("s", tmp_path / "s")
    model.save_adapter("p", tmp_path / "p")
    stats = ("running_mean", "running_var", "num_batches_tracked")
    bn = lambda prefix: {f"{prefix}.{k}" for k in ("weight", "bias", *stats)}  # noqa: E731
    head = {"head.layers.0.weight", "head.layers.0.bias"}
    series = set().union(*(
        {f"adapter.layers.{i}.conv2_norm.alpha"} | bn(f"adapter.layers.{i}.conv2_norm.inner")
        | bn(f"adapter.layers.{i}.conv2_norm.norm") | bn(f"adapter.layers.{i}.conv1_norm.norm")
        for i in range(2)
    ))  # fmt: skip
    parallel = set().union(*(
        {f"adapter.layers.{i}.block.alpha"} | bn(f"adapter.layers.{i}.conv1_norm.norm") | bn(f"adapter.layers.{i}.conv2_norm.norm")
        for i in range(2)
    ))  # fmt: skip
    assert set(load_file(str(tmp_path / "s" / "adapter.safetensors"))) == series | head
    assert set(load_file(str(tmp_path / "p" / "adapter.safetensors"))) == parallel | head


def test_clear_errors_on_cnns():
    model = AdapterModel(tiny_base("cnn"))
    with pytest.raises(ValueError, match=r"residual: no chosen block has the convolution\(s\) \['expand'\]"):
        model.add_adapter("a", "residual", targets=["expand"])
    with pytest.raises(ValueError, match="unknown convolution role.*'q'"):
        model.add_adapter("a", "residual", targets=["q"])
    with pytest.raises(ValueError, match="lora: no projection plays the role.* roles it has: conv1, conv2$"):
        model.add_adapter("a", "lora")  # the CNN's convolution roles, not q, k, v
    with pytest.raises(ValueError, match="use_dora is defined for linear projections only"):
        model.add_adapter("a", "lora", targets=["conv1"], use_dora=True)
    for method in ("pfeiffer", "houlsby", "ia3", "prefix", "prompt", "deep_prompt", "mam", "k_adapter"):  # no KeyError
        with pytest.raises(ValueError, match="works on a transformer's token sequences; .* is a CNN"):
            model.add_adapter("a", method, default_head())
    assert not model.adapters
    model.add_adapter("r", "residual", default_head())
    with pytest.raises(ValueError, match="a CNN's adapters are saved and loaded in adapterkit's format"):
        model.save_adapter("r", "unused", format="peft")
    with pytest.raises(ValueError, match="grouped convolution .*depthwise.*expand, project"):
        ConvLoraDelta(torch.nn.Conv2d(8, 8, 3, groups=8), LoraConfig(r=2, targets=("depthwise",)))


def test_a_loaded_adapter_runs_with_its_running_statistics_without_calling_eval(tmp_path):
    """A model built around a base in eval mode (as loaded) adds adapters in eval mode too: a
    domain's BatchNorms then use its saved statistics, and a pass leaves them as they are."""
    model = cnn(("a", "residual", {}))
    images = tiny_images()
    with torch.no_grad():
        expected = model(**images, adapters="a").logits
    model.save_adapter("a", tmp_path / "a")
    fresh = AdapterModel(tiny_base("cnn"))  # no .eval() on the AdapterModel
    fresh.load_adapter(tmp_path / "a")
    stats = {k: v.clone() for k, v in fresh.adapter_state("a").buffers.items()}
    with torch.no_grad():
        torch.testing.assert_close(fresh(**images).logits, expected, rtol=0, atol=0)
    assert all(torch.equal(v, stats[k]) for k, v in fresh.adapter_state("a").buffers.items())
