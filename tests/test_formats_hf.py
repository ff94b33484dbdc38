"""Hugging Face transformers model folders (config.json + model.safetensors / pytorch_model.bin).

The equality tests build each model with transformers itself (an optional test dependency, never a runtime
one), save it with ``save_pretrained`` — the files users download from the Hub have this layout — and compare
reprscope's encoder with the transformers module's own forward on the same input."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from reprscope.errors import ReprscopeError
from reprscope.formats import FORMATS, LoadOptions, load_checkpoint, read_checkpoint

SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)


def _transformers():
    return pytest.importorskip("transformers")


def _perturb(m):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # LayerScale, norms and biases start at constants: move every weight off them
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return m.eval()


def _save(model, folder, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder, **kw)
    return folder


def _close(ours, ref):
    err = float((ours - ref).abs().max())
    assert err <= 1e-5 * max(float(ref.abs().max()), 1.0), err


def _cases(tf):
    return {
        "dinov2": (tf.Dinov2Model, tf.Dinov2Config(**SMALL), "cls", "hf_dinov2"),
        "dinov2_swiglu": (tf.Dinov2Model, tf.Dinov2Config(**SMALL, use_swiglu_ffn=True), "cls", "hf_dinov2"),
        "dinov2_registers": (tf.Dinov2WithRegistersModel, tf.Dinov2WithRegistersConfig(**SMALL, num_register_tokens=4),
                             "cls", "hf_dinov2"),
        "vit": (tf.ViTModel, tf.ViTConfig(**SMALL, intermediate_size=128), "cls", "hf_vit"),
        "vit_mae": (tf.ViTMAEModel, tf.ViTMAEConfig(**SMALL, intermediate_size=128, mask_ratio=0.0), "mean", "hf_vit"),
        "ijepa": (tf.IJepaModel, tf.IJepaConfig(**SMALL, intermediate_size=128), "mean", "hf_vit"),
    }


@pytest.mark.parametrize("case", ["dinov2", "dinov2_swiglu", "dinov2_registers", "vit", "vit_mae", "ijepa"])
def test_a_transformers_model_folder_equals_the_transformers_module(tmp_path, case):
    tf = _transformers()
    cls, cfg, pool, fmt = _cases(tf)[case]  # the test extra pins transformers >= 4.48, which has every one
    torch.manual_seed(0)
    ref_model = _perturb(cls(cfg))
    folder = _save(ref_model, tmp_path / case)
    model = load_checkpoint(folder)
    assert model.format == fmt and model.bundle.encoder.pool == pool
    assert model.config["model_type"] == cfg.model_type
    sizes = (32, 48, 24) if fmt == "hf_dinov2" else (32,)  # DINOv2 resamples its position embedding to any input
    enc = model.bundle.encoder
    for size in sizes:
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            hidden = ref_model(pixel_values=x, output_hidden_states=True)
            last = hidden.last_hidden_state
            ref = last[:, 0] if pool == "cls" else last[:, enc.num_prefix_tokens:].mean(dim=1)
            _close(enc.forward_features(x), ref)
            # an intermediate block is that block's output (before the final norm), pooled the same way
            name = enc.feature_names[0]
            block = hidden.hidden_states[int(name.rsplit(".", 1)[1]) + 1]
            want = block[:, 0] if pool == "cls" else block[:, enc.num_prefix_tokens:].mean(dim=1)
            _close(model.bundle.forward_layers(x, [f"encoder.{name}"])[f"encoder.{name}"], want)


def test_the_weight_file_with_its_config_beside_it_and_the_pytorch_bin_read_the_same(tmp_path):
    tf = _transformers()
    torch.manual_seed(0)
    vit = _perturb(tf.ViTModel(tf.ViTConfig(**SMALL, intermediate_size=128)))
    _save(vit, tmp_path / "st")
    _save(vit, tmp_path / "bin", safe_serialization=False)
    x = torch.randn(2, 3, 32, 32)
    outs = []
    for path in (tmp_path / "st", tmp_path / "st" / "model.safetensors", tmp_path / "bin"):
        m = load_checkpoint(path)
        assert any("pooler" in u for u in m.unused_keys)
        with torch.no_grad():
            outs.append(m.bundle.encoder.forward_features(x))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_a_classification_wrapper_and_mae_pretraining_model_read_their_backbone(tmp_path):
    tf = _transformers()
    torch.manual_seed(0)
    clf = _perturb(tf.ViTForImageClassification(tf.ViTConfig(**SMALL, intermediate_size=128, num_labels=5)))
    model = load_checkpoint(_save(clf, tmp_path / "clf"))
    assert any(u.startswith("classifier.") for u in model.unused_keys)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _close(model.bundle.encoder.forward_features(x), clf.vit(pixel_values=x).last_hidden_state[:, 0])
    pre = _perturb(tf.ViTMAEForPreTraining(tf.ViTMAEConfig(**SMALL, intermediate_size=128, mask_ratio=0.0)))
    model = load_checkpoint(_save(pre, tmp_path / "mae"))
    assert model.method == "mae" and any(u.startswith("decoder.") for u in model.unused_keys)
    with torch.no_grad():
        _close(model.bundle.encoder.forward_features(x), pre.vit(pixel_values=x).last_hidden_state[:, 1:].mean(dim=1))


# -- without transformers: the folder, its JSON and its refusals ------------------------------------------------


def _handmade_vit_folder(folder, config=None, shards=False):
    """A ViTModel folder written by hand in the files' key names (what save_pretrained writes)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    d, h = 16, 32

    def t(*s):
        return torch.randn(*s, generator=g)

    sd = {"embeddings.cls_token": t(1, 1, d), "embeddings.position_embeddings": t(1, 5, d),
          "embeddings.patch_embeddings.projection.weight": t(d, 3, 8, 8),
          "embeddings.patch_embeddings.projection.bias": t(d), "layernorm.weight": t(d), "layernorm.bias": t(d)}
    pre = "encoder.layer.0."
    for n in ("attention.attention.query", "attention.attention.key", "attention.attention.value",
              "attention.output.dense"):
        sd[f"{pre}{n}.weight"], sd[f"{pre}{n}.bias"] = t(d, d), t(d)
    sd[f"{pre}intermediate.dense.weight"], sd[f"{pre}intermediate.dense.bias"] = t(h, d), t(h)
    sd[f"{pre}output.dense.weight"], sd[f"{pre}output.dense.bias"] = t(d, h), t(d)
    for n in ("layernorm_before", "layernorm_after"):
        sd[f"{pre}{n}.weight"], sd[f"{pre}{n}.bias"] = t(d), t(d)
    folder.mkdir()
    cfg = {"model_type": "vit", "hidden_size": d, "num_hidden_layers": 1, "num_attention_heads": 2,
           "layer_norm_eps": 1e-12, "hidden_act": "gelu", "image_size": 16, "patch_size": 8, **(config or {})}
    (folder / "config.json").write_text(json.dumps(cfg))
    if shards:
        keys = sorted(sd)
        a, b = keys[: len(keys) // 2], keys[len(keys) // 2:]
        save_file({k: sd[k] for k in a}, str(folder / "model-00001-of-00002.safetensors"))
        save_file({k: sd[k] for k in b}, str(folder / "model-00002-of-00002.safetensors"))
        wmap = {**{k: "model-00001-of-00002.safetensors" for k in a}, **{k: "model-00002-of-00002.safetensors" for k in b}}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wmap}))
    else:
        save_file(sd, str(folder / "model.safetensors"))
    return sd


def _reference_vit(sd, x, eps=1e-12):
    """The ViT layer written out (pre-norm block, GELU MLP, final LayerNorm, class token) from the HF names."""
    import torch.nn.functional as F

    d = sd["layernorm.weight"].shape[0]
    p = "encoder.layer.0."
    tok = F.conv2d(x, sd["embeddings.patch_embeddings.projection.weight"], sd["embeddings.patch_embeddings.projection.bias"], stride=8)
    tok = tok.flatten(2).transpose(1, 2)
    z = torch.cat([sd["embeddings.cls_token"].expand(len(x), -1, -1), tok], 1) + sd["embeddings.position_embeddings"]
    y = F.layer_norm(z, (d,), sd[p + "layernorm_before.weight"], sd[p + "layernorm_before.bias"], eps)

    def lin(v, n):
        return F.linear(v, sd[p + n + ".weight"], sd[p + n + ".bias"])

    def heads(v):
        return v.reshape(len(x), -1, 2, d // 2).transpose(1, 2)

    q, k, v = heads(lin(y, "attention.attention.query")), heads(lin(y, "attention.attention.key")), heads(lin(y, "attention.attention.value"))
    a = ((q @ k.transpose(-1, -2)) / (d // 2) ** 0.5).softmax(-1) @ v
    z = z + lin(a.transpose(1, 2).reshape(len(x), -1, d), "attention.output.dense")
    y = F.layer_norm(z, (d,), sd[p + "layernorm_after.weight"], sd[p + "layernorm_after.bias"], eps)
    z = z + lin(F.gelu(lin(y, "intermediate.dense")), "output.dense")
    return F.layer_norm(z, (d,), sd["layernorm.weight"], sd["layernorm.bias"], eps)


@pytest.mark.parametrize("shards", [False, True])
def test_a_handmade_folder_equals_the_written_out_vit_with_the_configs_epsilon(tmp_path, shards):
    sd = _handmade_vit_folder(tmp_path / "m", shards=shards)
    model = load_checkpoint(tmp_path / "m")
    assert model.format == "hf_vit" and model.config["layer_norm_eps"] == 1e-12
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        _close(model.bundle.encoder.forward_features(x), _reference_vit(sd, x)[:, 0])
        assert float((model.bundle.encoder.forward_features(x) - _reference_vit(sd, x, eps=1e-6)[:, 0]).abs().max()) > 0
    assert len(model.sha256) == 64


def test_folder_refusals_are_one_line(tmp_path):
    _handmade_vit_folder(tmp_path / "m")
    (tmp_path / "m" / "config.json").unlink()
    with pytest.raises(ReprscopeError, match="config.json"):
        read_checkpoint(tmp_path / "m")
    with pytest.raises(ReprscopeError, match="config.json beside them, which is missing"):
        load_checkpoint(tmp_path / "m" / "model.safetensors")
    _handmade_vit_folder(tmp_path / "wide", config={"hidden_size": 32})
    with pytest.raises(ReprscopeError, match="hidden_size = 32 but the hf_vit weights have 16"):
        load_checkpoint(tmp_path / "wide")
    _handmade_vit_folder(tmp_path / "act", config={"hidden_act": "mish"})
    with pytest.raises(ReprscopeError, match="hidden_act 'mish'"):
        load_checkpoint(tmp_path / "act")
    _handmade_vit_folder(tmp_path / "kind", config={"model_type": "bert"})
    with pytest.raises(ReprscopeError, match="model_type is 'bert'"):
        load_checkpoint(tmp_path / "kind")
    _handmade_vit_folder(tmp_path / "sh", shards=True)
    index = tmp_path / "sh" / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "../outside.safetensors"}}))
    with pytest.raises(ReprscopeError, match="not a file in"):
        load_checkpoint(tmp_path / "sh")
    _handmade_vit_folder(tmp_path / "big")
    (tmp_path / "big" / "config.json").write_text(" " * (5 * 2**20))
    with pytest.raises(ReprscopeError, match="at most"):
        load_checkpoint(tmp_path / "big")


def test_the_hf_formats_are_detected_only_on_their_layout():
    sd = {"embeddings.patch_embeddings.projection.weight": torch.zeros(4, 3, 2, 2),
          "embeddings.position_embeddings": torch.zeros(1, 5, 4), "encoder.layer.0.layernorm_before.weight": torch.zeros(4)}
    assert [n for n in FORMATS.names() if FORMATS.get(n).detect(sd)] == ["hf_vit"]
    sd["encoder.layer.0.layer_scale1.lambda1"] = torch.zeros(4)
    assert [n for n in FORMATS.names() if FORMATS.get(n).detect(sd)] == ["hf_dinov2"]


def test_pool_mean_on_a_hf_vit_is_the_mean_of_its_normed_patch_tokens(tmp_path):
    sd = _handmade_vit_folder(tmp_path / "m")
    model = load_checkpoint(tmp_path / "m", options=LoadOptions(pool="mean"))
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        _close(model.bundle.encoder.forward_features(x), _reference_vit(sd, x)[:, 1:].mean(dim=1))


# -- open_clip image towers ---------------------------------------------------------------------------------------


def _open_clip_folder(folder, quick, tower_only=False, config=True):
    oc = pytest.importorskip("open_clip")
    from open_clip.model import CLIP

    torch.manual_seed(0)
    vision = {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32}
    text = {"context_length": 8, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}
    m = _perturb(CLIP(embed_dim=24, vision_cfg=vision, text_cfg=text, quick_gelu=quick))
    folder.mkdir()
    sd = m.visual.state_dict() if tower_only else m.state_dict()
    torch.save(sd, folder / "open_clip_pytorch_model.bin")
    if config:
        cfg = {"model_cfg": {"embed_dim": 24, "quick_gelu": quick, "vision_cfg": vision, "text_cfg": text},
               "preprocess_cfg": {"mean": list(oc.OPENAI_DATASET_MEAN), "std": list(oc.OPENAI_DATASET_STD)}}
        (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    return m, folder / "open_clip_pytorch_model.bin"


@pytest.mark.parametrize("quick, tower_only", [(False, False), (True, False), (True, True)])
def test_an_open_clip_tower_equals_open_clips_encode_image(tmp_path, quick, tower_only):
    ref, path = _open_clip_folder(tmp_path / "m", quick, tower_only)
    model = load_checkpoint(path)
    assert model.format == "open_clip" and model.config["quick_gelu"] is quick
    assert any("text tower" in u for u in model.unused_keys) != tower_only
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    got = {}
    hook = ref.visual.ln_post.register_forward_hook(lambda _m, _i, o: got.__setitem__("t", o))
    with torch.no_grad():
        want = ref.encode_image(x)
        out = model.bundle(x)
    hook.remove()
    _close(out["z"], want)  # the projector is CLIP's image embedding
    _close(out["h"], got["t"][:, 0])  # the encoder is ln_post of the class token
    assert model.preprocess.interpolation == "bicubic" and model.preprocess.mean[0] == pytest.approx(0.48145466)


def test_an_open_clip_tower_without_its_config_is_refused_in_one_line(tmp_path):
    _, path = _open_clip_folder(tmp_path / "m", True, config=False)
    with pytest.raises(ReprscopeError, match="QuickGELU .* open_clip_config.json beside them, which is missing"):
        load_checkpoint(path)


def test_the_image_processor_config_beside_the_weights_sets_the_preprocessing(tmp_path):
    _handmade_vit_folder(tmp_path / "m")
    (tmp_path / "m" / "preprocessor_config.json").write_text(json.dumps(
        {"do_resize": True, "size": {"shortest_edge": 20}, "do_center_crop": True, "crop_size": {"height": 16},
         "resample": 3, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}))
    pre = load_checkpoint(tmp_path / "m").preprocess
    assert (pre.resolution, pre.resize, pre.interpolation) == (16, 20, "bicubic")
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.25, 0.25, 0.25)
    (tmp_path / "m" / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 16}, "image_mean": "x"}))
    pre = load_checkpoint(tmp_path / "m").preprocess
    assert pre.resolution == 16 and pre.mean[0] == pytest.approx(0.485)  # a malformed mean falls back to ImageNet's
