"""Overrides of detection (``--branch``, ``--arch``), preprocessing that follows the source (``--preprocess``),
and what ``reprscope inspect`` prints for every format."""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Callable, Dict

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from reprscope.errors import ReprscopeError
from reprscope.formats import FORMATS, LoadOptions, load_checkpoint
from reprscope.formats import preprocess as pp
from reprscope_cli.main import app

from test_formats import (_cifar_case, _features, _mocov2_case, _mocov3_case, _randomise_bn, _simsiam_case,
                          _torchvision_case)
from test_formats_more import _barlow_case, _byol_case, _sthalles_case, _swav_released_case, _vicreg_case
from test_formats_projects import _ibot_case
from test_formats_zoo import _beit_v2_file
from test_formats_vit import _dino_case, _mae_case, _vit
from test_formats_wild import (LIGHTNING, LightlyBYOL, MoCoV3ViT, SoloBYOL, _dinov2, _perturb, _timm_case)

FIX = Path(__file__).resolve().parent.parent / "fixtures"
TOL = 1e-5
X64 = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


def cli(*args):
    return _runner().invoke(app, [str(a) for a in args])


def _save(tmp_path, payload, name="ckpt.pth"):
    p = tmp_path / name
    torch.save(payload, p)
    return p


# -- --branch ------------------------------------------------------------------------------------------------


def test_moco_v2_momentum_branch_is_the_key_encoder(tmp_path):
    m, payload, *_ = _mocov2_case()
    with torch.no_grad():  # make the key encoder differ from the query encoder
        for p in m.encoder_k.parameters():
            p.add_(0.05)
    payload["state_dict"] = {"module." + k: v for k, v in m.state_dict().items()}
    p = _save(tmp_path, payload)
    online, mom = load_checkpoint(p), load_checkpoint(p, options=LoadOptions(branch="momentum"))
    assert (online.branch, mom.branch) == ("online", "momentum") and mom.config["branch"] == "encoder_k"
    assert set(online.branches) == {"online", "momentum"} and "encoder_k" in online.branches["momentum"]
    with torch.no_grad():
        h = _features(m.encoder_k, X64)
        out = mom.bundle(X64)
        assert (out["h"] - h).abs().max() <= TOL and (out["z"] - m.encoder_k.fc(h)).abs().max() <= TOL
        assert (online.bundle(X64)["h"] - h).abs().max() > 1e-3
    assert any(u.startswith("module.encoder_q.") and "query (online) encoder" in u for u in mom.unused_keys)
    # --branch teacher finds the momentum network (the teacher is the momentum network)
    assert load_checkpoint(p, options=LoadOptions(branch="teacher")).branch == "momentum"


def test_byol_target_branch(tmp_path):
    m, payload, *_ = _byol_case()
    with torch.no_grad():
        for p in m.target_encoder.parameters():
            p.add_(0.05)
    loaded = load_checkpoint(_save(tmp_path, m.state_dict()), options=LoadOptions(branch="momentum"))
    with torch.no_grad():
        h = _features(m.target_encoder.net, X64)
        out = loaded.bundle(X64)
        assert (out["h"] - h).abs().max() <= TOL and (out["z"] - m.target_encoder.projector(h)).abs().max() <= TOL
    assert not loaded.bundle.has("predictor")


def test_dino_branch_names(tmp_path):
    payload, student, teacher = _dino_case()
    p = _save(tmp_path, payload)
    assert load_checkpoint(p).branch == "teacher"
    assert load_checkpoint(p, options=LoadOptions(branch="momentum")).branch == "teacher"
    s = load_checkpoint(p, options=LoadOptions(branch="student"))
    assert s.branch == "student" and s.config["branch"] == "student"
    with pytest.raises(ReprscopeError, match="dino_student reads the student; branch 'teacher' contradicts it"):
        load_checkpoint(p, "dino_student", LoadOptions(branch="teacher"))


def test_missing_branch_lists_the_available_ones(tmp_path):
    p = _save(tmp_path, _torchvision_case()[1])
    with pytest.raises(ReprscopeError, match=r"this torchvision checkpoint has no 'teacher' branch; available: online \("):
        load_checkpoint(p, options=LoadOptions(branch="teacher"))
    p = _save(tmp_path, _simsiam_case()[1], "s.pth")
    with pytest.raises(ReprscopeError, match=r"SimSiam checkpoint has no 'momentum' branch; available: online "
                                             r"\(module\.encoder\.\*, the only network in the file\)"):
        load_checkpoint(p, options=LoadOptions(branch="momentum"))
    # a name finds its counterpart: the student of a MoCo file is its online (query) network
    assert load_checkpoint(_save(tmp_path, _mocov3_case()[1], "m3.pth"), options=LoadOptions(branch="student")).branch == "online"
    with pytest.raises(ReprscopeError, match="branch must be one of teacher, student, online, momentum; got 'ema'"):
        LoadOptions(branch="ema")


# -- --arch --------------------------------------------------------------------------------------------------


def test_arch_override_resnet(tmp_path):
    m, payload, *_ = _simsiam_case()
    p = _save(tmp_path, payload)
    same = load_checkpoint(p, options=LoadOptions(arch="resnet18"))
    assert same.config["arch"] == "resnet18" and same.config["arch_source"] == "--arch"
    with torch.no_grad():
        assert (same.bundle(X64)["h"] - _features(m.encoder, X64)).abs().max() <= TOL
    with pytest.raises(ReprscopeError, match=r"do not fit the architecture 'resnet34' given with --arch: .*missing "
                                             r"weights: .*layer1\.2\."):
        load_checkpoint(p, options=LoadOptions(arch="resnet34"))
    with pytest.raises(ReprscopeError, match=r"arch 'resnt18' is not a timm model name; close names: .*resnet18"):
        load_checkpoint(p, options=LoadOptions(arch="resnt18"))
    with pytest.raises(ReprscopeError, match="builds a timm VisionTransformer, but this checkpoint holds a ResNet"):
        load_checkpoint(p, options=LoadOptions(arch="vit_tiny_patch16_224"))
    with pytest.raises(ReprscopeError, match="arch does not apply to a reprscope checkpoint"):
        load_checkpoint(FIX / "tiny_simclr.pt", options=LoadOptions(arch="resnet18"))
    with pytest.raises(ReprscopeError, match="arch takes NAME or NAME:key=value"):
        LoadOptions(arch="vit:num_heads")


def test_arch_override_vit_timm_name(tmp_path):
    """timm's test_vit (64 wide, 2 heads): no convention for width 64, so the shape inference assumes head_dim
    64 (1 head) and says so; --arch test_vit rebuilds it exactly."""
    import timm

    torch.manual_seed(5)
    ref = _perturb(timm.create_model("test_vit", pretrained=False, num_classes=0), 5)
    p = _save(tmp_path, ref.state_dict())
    guessed = load_checkpoint(p)
    assert guessed.config["timm_kwargs"]["num_heads"] == 1 and "assumed head_dim 64" in guessed.config["num_heads_source"]
    x = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(1))  # test_vit's pretrained_cfg size
    loaded = load_checkpoint(p, options=LoadOptions(arch="test_vit"))
    assert loaded.config["arch"] == "test_vit" and "given with --arch" in loaded.config["num_heads_source"]
    with torch.no_grad():
        ref_h = ref.forward_head(ref.forward_features(x), pre_logits=True)
        assert (loaded.bundle(x)["h"] - ref_h).abs().max() <= TOL
        assert (guessed.bundle(x)["h"] - ref_h).abs().max() > 1e-4


# -- preprocessing follows the source ------------------------------------------------------------------------


@pytest.mark.parametrize("make,fmt,res,stats", [
    (lambda: _torchvision_case()[1], "torchvision", 224, "ImageNet"),
    (lambda: _cifar_case()[1], "torchvision", 32, "CIFAR-10"),
    (lambda: _dino_case()[0], "dino", 224, "ImageNet"),
    (lambda: _mae_case()[0], "mae", 32, "ImageNet"),  # its position embedding is for 32×32 inputs
])
def test_preprocess_reported(tmp_path, make, fmt, res, stats):
    loaded = load_checkpoint(_save(tmp_path, make()))
    assert loaded.format == fmt
    pre = loaded.preprocess
    assert (pre.resolution, pre.stats) == (res, stats)
    if stats == "ImageNet":
        assert pre.mean == pp.IMAGENET_MEAN and pre.resize == int(res / 0.875)  # int(): the sources' and timm's rule
    else:
        assert pre.mean == pp.CIFAR_MEAN and pre.resize is None


def test_native_preprocess_from_training_data(tiny_ckpt):
    assert load_checkpoint(tiny_ckpt).preprocess is None  # trained on dgp: not an image model
    spec = {"name": "cifar10", "path": "/x", "resolution": 32, "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5]}
    pre = pp.from_native(spec, [3, 32, 32])
    assert (pre.resolution, pre.mean, pre.std, pre.resize) == (32, (0.1, 0.2, 0.3), (0.5, 0.5, 0.5), None)
    assert "trained on cifar10" in pre.reason
    assert pp.from_native({"name": "dgp", "latent_dim": 10}, [10]) is None


def test_apply_preprocess_rules():
    imagenet = pp.imagenet(224)
    spec = {"name": "cifar10", "path": "/data"}
    out, notes = pp.apply_preprocess(spec, imagenet)
    assert out["resolution"] == 224 and out["mean"] == list(pp.IMAGENET_MEAN) and out["std"] == list(pp.IMAGENET_STD)
    assert "resize" not in out and notes and "follows the checkpoint" in notes[0]
    out, _ = pp.apply_preprocess({**spec, "mean": [0.5] * 3}, imagenet, explicit={"mean": [0.5] * 3})
    assert out["mean"] == [0.5] * 3 and out["resolution"] == 224  # the user's --set wins, the rest follows
    assert pp.apply_preprocess(spec, imagenet, mode="data") == (spec, [])
    assert pp.apply_preprocess({"name": "dgp"}, imagenet) == ({"name": "dgp"}, [])  # not an image set
    out, _ = pp.apply_preprocess({"name": "imagefolder", "path": "/x"}, pp.cifar("test"))
    assert (out["resolution"], out["resize"]) == (32, 32)
    with pytest.raises(ReprscopeError, match="preprocess must be one of source, data"):
        pp.apply_preprocess(spec, imagenet, mode="model")


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    base = root / "cifar-10-batches-py"
    base.mkdir()
    data = np.random.default_rng(0).integers(0, 256, size=(6, 3072), dtype=np.uint8)
    with open(base / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": [0, 1, 2, 3, 4, 5]}, f, protocol=2)
    return root


def _store_data(h5: Path) -> Dict:
    with h5py.File(h5, "r") as f:
        return {"dataset": json.loads(f.attrs["dataset"]), "branch": f.attrs["source_branch"],
                "dims": {k: f["embeddings"][k].shape for k in f["embeddings"]}}


def test_extract_applies_the_source_preprocessing(tmp_path, cifar_dir):
    imagenet = _save(tmp_path, _torchvision_case()[1], "in1k.pth")
    cifar = _save(tmp_path, _cifar_case()[1], "cifar.pth")
    data = f"cifar10:{cifar_dir}"
    common = ["--views", "1", "--quiet", "--batch-size", "4"]
    r = cli("extract", imagenet, "--data", data, "--out", tmp_path / "a.h5", *common)
    assert r.exit_code == 0, r.output
    assert "note: input preprocessing follows the checkpoint: resize 256 + centre crop 224, ImageNet" in r.stdout
    ds = _store_data(tmp_path / "a.h5")["dataset"]
    assert ds["resolution"] == 224 and ds["mean"] == list(pp.IMAGENET_MEAN)
    r = cli("extract", imagenet, "--data", data, "--out", tmp_path / "b.h5", "--preprocess", "data", *common)
    assert r.exit_code == 0 and "note:" not in r.stdout
    ds = _store_data(tmp_path / "b.h5")["dataset"]
    assert ds["resolution"] == 32 and ds["mean"] == [0.4914, 0.4822, 0.4465]
    r = cli("extract", imagenet, "--data", data, "--out", tmp_path / "c.h5", "--set", "data.resolution=64", *common)
    assert r.exit_code == 0 and _store_data(tmp_path / "c.h5")["dataset"]["resolution"] == 64
    r = cli("extract", cifar, "--data", data, "--out", tmp_path / "d.h5", *common)
    assert r.exit_code == 0
    ds = _store_data(tmp_path / "d.h5")["dataset"]
    assert ds["resolution"] == 32 and ds["mean"] == list(pp.CIFAR_MEAN)


def test_fixed_size_vit_refuses_other_sizes(tmp_path, cifar_dir):
    vit = _save(tmp_path, _vit(7).state_dict(), "vit32.pth")  # a timm ViT for 32×32 inputs, no interpolation
    r = cli("extract", vit, "--data", f"cifar10:{cifar_dir}", "--out", tmp_path / "v.h5", "--quiet", "--views", "1",
            "--set", "data.resolution=48")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1
    assert "takes 32×32 inputs (its position embedding is fixed) but dataset cifar10 gives 48×48" in r.stderr
    assert not (tmp_path / "v.h5").exists()


def test_analyze_branch_and_arch_reach_the_loader(tmp_path, cifar_dir):
    m, payload, *_ = _mocov2_case()
    p = _save(tmp_path, payload)
    base = ["--data", f"cifar10:{cifar_dir}", "--analyzers", "spectrum", "--views", "1", "--quiet"]
    r1 = cli("analyze", p, *base, "--out", tmp_path / "a.csv")
    r2 = cli("analyze", p, *base, "--branch", "momentum", "--arch", "resnet18", "--out", tmp_path / "b.csv")
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    stores = sorted((tmp_path / "cache").rglob("*.h5"))
    assert len(stores) == 2  # the branch is part of the cache key
    assert sorted(_store_data(s)["branch"] for s in stores) == ["momentum", "online"]
    r = cli("analyze", _save(tmp_path, _simsiam_case()[1], "s.pth"), *base, "--branch", "teacher", "--out",
            tmp_path / "c.csv")
    assert r.exit_code == 2 and "no 'teacher' branch; available: online" in r.stderr
    assert not (tmp_path / "c.csv").exists()


# -- inspect: every format says its format, branch(es) and preprocessing -------------------------------------


def _solo(tmp_path):
    torch.manual_seed(1)
    return {"state_dict": _randomise_bn(SoloBYOL()).state_dict(), **LIGHTNING}


INSPECT: Dict[str, Callable] = {
    "simsiam": lambda t: _simsiam_case()[1],
    "moco": lambda t: _mocov2_case()[1],
    "torchvision": lambda t: _torchvision_case()[1],
    "barlowtwins": lambda t: _barlow_case()[1],
    "vicreg": lambda t: _vicreg_case()[1],
    "swav": lambda t: _swav_released_case()[1],
    "simclr_sthalles": lambda t: _sthalles_case()[1],
    "byol": lambda t: _byol_case()[1],
    "dino": lambda t: _dino_case()[0],
    "mae": lambda t: _mae_case()[0],
    "vit": lambda t: _vit(3).state_dict(),
    "dinov2": lambda t: _dinov2(2, registers=4).state_dict(),
    "moco_v3_vit": lambda t: {"state_dict": _perturb(MoCoV3ViT(), 1).state_dict(), "arch": "vit_small"},
    "solo_learn": _solo,
    "lightly": lambda t: {"state_dict": LightlyBYOL().state_dict(), **LIGHTNING},
    "timm": lambda t: _timm_case("resnet18", 3)[2],
    "torchvision_vit": lambda t: _torchvision_vit().state_dict(),
    "ijepa": lambda t: _ijepa(),
    "hf_vit": lambda t: _hf(t, "vit"),
    "hf_dinov2": lambda t: _hf(t, "dinov2"),
    "open_clip": lambda t: _open_clip(t),
    "ibot": lambda t: _ibot_case(t)[0],
    "beit": lambda t: {"model": _beit_v2_file(t)[1]},
    "byol_backbones": lambda t: {"online_backbone": {f"module.{k}": v for k, v in _tv18().state_dict().items()}},
    "vissl": lambda t: {"classy_state_dict": {"base_model": {"model": {"trunk": {
        f"_feature_blocks.{k}": v for k, v in _tv18().state_dict().items() if not k.startswith("fc.")}, "heads": {}}}}},
    "mmpretrain": lambda t: {"meta": {}, "state_dict": {
        **{f"backbone.{k}": v for k, v in _tv18().state_dict().items() if not k.startswith("fc.")},
        "neck.mlp.0.weight": torch.randn(16, 512), "neck.mlp.0.bias": torch.zeros(16),
        "neck.mlp.2.weight": torch.randn(8, 16), "neck.mlp.2.bias": torch.zeros(8)}},
}


def _tv18():
    import torchvision

    torch.manual_seed(8)
    return torchvision.models.resnet18()


def _open_clip(folder):
    """An open_clip ViT image tower (``model.visual.state_dict()`` names) with open_clip_config.json beside it."""
    import json

    torch.manual_seed(6)
    d, g = 16, 2
    sd = {"class_embedding": torch.randn(d), "positional_embedding": torch.randn(g * g + 1, d),
          "conv1.weight": torch.randn(d, 3, 8, 8), "ln_pre.weight": torch.ones(d), "ln_pre.bias": torch.zeros(d),
          "ln_post.weight": torch.ones(d), "ln_post.bias": torch.zeros(d), "proj": torch.randn(d, 8)}
    p = "transformer.resblocks.0."
    sd.update({p + "ln_1.weight": torch.ones(d), p + "ln_1.bias": torch.zeros(d), p + "ln_2.weight": torch.ones(d),
               p + "ln_2.bias": torch.zeros(d), p + "attn.in_proj_weight": torch.randn(3 * d, d),
               p + "attn.in_proj_bias": torch.zeros(3 * d), p + "attn.out_proj.weight": torch.randn(d, d),
               p + "attn.out_proj.bias": torch.zeros(d), p + "mlp.c_fc.weight": torch.randn(4 * d, d),
               p + "mlp.c_fc.bias": torch.zeros(4 * d), p + "mlp.c_proj.weight": torch.randn(d, 4 * d),
               p + "mlp.c_proj.bias": torch.zeros(d)})
    cfg = {"model_cfg": {"quick_gelu": True, "vision_cfg": {"width": d, "layers": 1, "head_width": 8,
                                                            "patch_size": 8, "image_size": 16}}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    return sd


def _hf(folder, kind):
    """A transformers model's tensors in the files' names, with its config.json written beside them."""
    import json

    torch.manual_seed(5)
    d = 16
    sd = {"embeddings.cls_token": torch.randn(1, 1, d), "embeddings.position_embeddings": torch.randn(1, 5, d),
          "embeddings.patch_embeddings.projection.weight": torch.randn(d, 3, 8, 8),
          "embeddings.patch_embeddings.projection.bias": torch.randn(d),
          "layernorm.weight": torch.ones(d), "layernorm.bias": torch.zeros(d)}
    p = "encoder.layer.0."
    for n in ("query", "key", "value"):
        sd[f"{p}attention.attention.{n}.weight"], sd[f"{p}attention.attention.{n}.bias"] = torch.randn(d, d), torch.zeros(d)
    sd[f"{p}attention.output.dense.weight"], sd[f"{p}attention.output.dense.bias"] = torch.randn(d, d), torch.zeros(d)
    if kind == "vit":
        names = {"layernorm_before": "ln", "layernorm_after": "ln", "intermediate.dense": (4 * d, d), "output.dense": (d, 4 * d)}
    else:
        sd["embeddings.mask_token"] = torch.zeros(1, d)
        names = {"norm1": "ln", "norm2": "ln", "mlp.fc1": (4 * d, d), "mlp.fc2": (d, 4 * d),
                 "layer_scale1": "ls", "layer_scale2": "ls"}
    for n, shape in names.items():
        if shape == "ln":
            sd[f"{p}{n}.weight"], sd[f"{p}{n}.bias"] = torch.ones(d), torch.zeros(d)
        elif shape == "ls":
            sd[f"{p}{n}.lambda1"] = torch.ones(d)
        else:
            sd[f"{p}{n}.weight"], sd[f"{p}{n}.bias"] = torch.randn(*shape), torch.zeros(shape[0])
    cfg = {"model_type": kind, "hidden_size": d, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 16,
           "patch_size": 8, "layer_norm_eps": 1e-12 if kind == "vit" else 1e-6}
    (folder / "config.json").write_text(json.dumps(cfg))
    return sd


def _ijepa():
    """I-JEPA's train.py layout: three DDP-saved networks; the encoders are class-token-free ViTs."""
    torch.manual_seed(4)
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=192, depth=2, num_heads=3, class_token=False,
                            global_pool="avg", fc_norm=False, num_classes=0)
    enc = {f"module.{k}": v for k, v in vit.state_dict().items()}
    pred = {"module.predictor_embed.weight": torch.randn(96, 192), "module.mask_token": torch.zeros(1, 1, 96),
            "module.predictor_blocks.0.norm1.weight": torch.ones(96)}
    return {"encoder": enc, "predictor": pred, "target_encoder": dict(enc), "opt": {}, "scaler": None, "epoch": 2}


def _torchvision_vit():
    import torchvision

    torch.manual_seed(2)
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=3, hidden_dim=192,
                                                mlp_dim=384, num_classes=10)


def test_inspect_covers_every_format():
    assert set(INSPECT) | {"reprscope", "dino_student"} == set(FORMATS.names())


@pytest.mark.parametrize("fmt", sorted(INSPECT))
def test_detection_is_unique_for_every_format(tmp_path, fmt):
    payload = INSPECT[fmt](tmp_path)
    assert [n for n in FORMATS.names() if FORMATS.get(n).detect(payload)] == [fmt]


def test_image_model_on_non_image_data_is_refused(tmp_path):
    p = _save(tmp_path, _torchvision_case()[1])
    r = cli("extract", p, "--data", "dgp", "--out", tmp_path / "e.h5", "--quiet")
    assert r.exit_code == 2 and "holds an image model" in r.stderr and "dataset dgp is not an image data set" in r.stderr
    assert not (tmp_path / "e.h5").exists()


@pytest.mark.parametrize("fmt", sorted(INSPECT))
def test_inspect_prints_format_branch_and_preprocessing(tmp_path, fmt):
    p = _save(tmp_path, INSPECT[fmt](tmp_path))
    r = cli("inspect", p)
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert f"format:       {fmt}\n" in out
    assert "branch:       " in out and "(default)" in out
    assert "preprocessing: " in out and "mean/std" in out
    assert "architecture: " in out and "extractable layers: encoder" in out
    loaded = load_checkpoint(p)
    for name in loaded.branches:
        assert f"  {'*' if name == loaded.branch else ' '} {name:9s} " in out


def test_inspect_with_branch_and_arch(tmp_path):
    p = _save(tmp_path, _dino_case()[0])
    r = cli("inspect", p, "--branch", "student")
    assert r.exit_code == 0 and "branch:       student (chosen with --branch)" in r.stdout
    assert "  * student" in r.stdout and "    teacher" in r.stdout
    assert "attention heads: 2" in r.stdout
    r = cli("inspect", _save(tmp_path, _simsiam_case()[1], "s.pth"), "--arch", "resnet18")
    assert r.exit_code == 0 and "architecture: resnet18 (--arch)" in r.stdout
    r = cli("inspect", FIX / "tiny_simclr.pt")
    assert r.exit_code == 0 and "preprocessing: none (not an image model)" in r.stdout
    assert "branch:       online (default)" in r.stdout


def test_a_timm_checkpoint_is_preprocessed_with_its_bicubic_eval_transform(tmp_path):
    loaded = load_checkpoint(_save(tmp_path, INSPECT["timm"](tmp_path)))
    pre = loaded.preprocess
    assert pre.interpolation == "bicubic" and "(bicubic)" in pre.describe()
    assert pre.data_params()["interpolation"] == "bicubic"
