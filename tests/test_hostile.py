"""Hostile and unlucky inputs of every kind, tried as an attacker would: each ends in one ``error:`` line and
exit 2 (or a working result where that is right), with no traceback, no file left behind, no file opened or
folder listed that the user did not name, within a memory cap and a time cap (``hostile_driver.py``)."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures"


def _store(path: Path) -> Path:
    shutil.copy(FIXTURES / "tiny_dgp.h5", path)
    return path


def _native(path: Path, **changes) -> Path:
    ck = torch.load(FIXTURES / "tiny_simclr.pt", weights_only=True)
    for k, v in changes.items():
        ck[k] = v
    torch.save(ck, path)
    return path


def _cfg(**model_changes):
    ck = torch.load(FIXTURES / "tiny_simclr.pt", weights_only=True)
    cfg = json.loads(json.dumps(ck["config"]))
    cfg["model"].update(model_changes)
    return cfg


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    work = root / "work"
    work.mkdir()
    secret = root / "secret"
    secret.mkdir()
    (secret / "passwd").write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 40)
    png = secret / "outside.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png)
    cases = []

    def case(name, *argv, env=None, fsize=None):
        cases.append({"name": name, "argv": [str(a) for a in argv], "cwd": str(work), "env": env or {},
                      "fsize": fsize})

    # -- stores that point outside themselves
    for kind in ("external_link", "raw_external", "virtual", "soft_loop"):
        p = _store(work / f"{kind}.h5")
        with h5py.File(p, "a") as f:
            if kind == "external_link":
                f["embeddings/stolen"] = h5py.ExternalLink(str(secret / "passwd"), "/x")
            elif kind == "raw_external":
                name = next(iter(f["embeddings"]))
                shape = f["embeddings"][name].shape
                del f["embeddings"][name]
                f.create_dataset(f"embeddings/{name}", shape=shape, dtype="u1",
                                 external=[(str(secret / "passwd"), 0, int(np.prod(shape)))])
            elif kind == "virtual":
                name = next(iter(f["embeddings"]))
                shape = f["embeddings"][name].shape
                lay = h5py.VirtualLayout(shape=shape, dtype="f4")
                lay[:] = h5py.VirtualSource(str(secret / "missing.h5"), "x", shape=shape)
                del f["embeddings"][name]
                f.create_virtual_dataset(f"embeddings/{name}", lay, fillvalue=0)
            else:
                f["embeddings/self"] = h5py.SoftLink("/embeddings/self")
        case(f"h5_{kind}", "analyze", p, "--quiet", "--out", work / f"{kind}.csv")
    p = _store(work / "bad_spec.h5")
    with h5py.File(p, "a") as f:
        if "modules" in f:
            del f["modules"]
        g = f.create_group("modules/projector")
        g.attrs["spec"] = json.dumps([{"type": "linear", "bias": False}])
    case("h5_spec_without_in_out", "analyze", p, "--quiet", "--analyzers", "tangent,weights")

    # -- checkpoints
    case("ckpt_checkpoint_path", "inspect", _native(work / "cp.pt", config=_cfg(
        backbone="resnet18", in_shape=[3, 32, 32], backbone_kwargs={"checkpoint_path": str(secret / "passwd")})))
    cfg = _cfg()
    cfg["data"] = {"name": "imagefolder", "path": "/", "download": True}
    case("ckpt_data_path_and_download", "analyze", _native(work / "data.pt", config=cfg), "--quiet",
         env={"REPRSCOPE_CACHE": str(work / "cache")})
    case("ckpt_huge_width", "inspect", _native(work / "wide.pt", config=_cfg(
        backbone_kwargs={"width": 200_000, "depth": 3})))
    case("ckpt_config_str", "inspect", _native(work / "t1.pt", config="x"))
    case("ckpt_state_list", "inspect", _native(work / "t2.pt", state_dict=[1, 2]))
    case("ckpt_step_str", "inspect", _native(work / "t3.pt", step="x"))
    (work / "pickle.safetensors").write_bytes(pickle.dumps({"a": 1}))
    case("safetensors_pickle", "inspect", work / "pickle.safetensors")
    (work / "hdr.safetensors").write_bytes(struct.pack("<Q", 200_000_000) + b"{" + b" " * 64)
    case("safetensors_huge_header", "inspect", work / "hdr.safetensors")
    d = 64
    vit = {"cls_token": torch.zeros(1, 1, d), "pos_embed": torch.zeros(1, 5, d),
           "patch_embed.proj.weight": torch.zeros(d, 3, 16, 16), "patch_embed.proj.bias": torch.zeros(d)}
    for k, shape in {"norm1.weight": (d,), "norm1.bias": (d,), "attn.qkv.weight": (3 * d, d), "attn.qkv.bias": (3 * d,),
                     "attn.proj.weight": (d, d), "attn.proj.bias": (d,), "norm2.weight": (d,), "norm2.bias": (d,),
                     "mlp.fc1.weight": (4 * d, d), "mlp.fc1.bias": (4 * d,), "mlp.fc2.weight": (d, 4 * d),
                     "mlp.fc2.bias": (d,)}.items():
        vit[f"blocks.0.{k}"] = torch.zeros(shape)
    vit.update({f"blocks.{i}.norm1.weight": torch.zeros(1) for i in range(1, 3000)})  # names 3000 blocks
    torch.save(vit, work / "vit_blocks.pt")
    case("raw_vit_many_blocks", "inspect", work / "vit_blocks.pt")

    # -- CIFAR batches
    cifar = work / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    a = np.zeros(4, np.uint8)
    red = a.__reduce__()
    state = list(red[2])
    state[1] = (2 ** 40,)

    class Huge:
        def __reduce__(self):
            return red[0], red[1], tuple(state)

    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        (cifar / name).write_bytes(pickle.dumps({b"data": Huge(), b"labels": [0]}, protocol=2))
    case("cifar_huge_shape", "train", "simclr", "--data", f"cifar10:{work / 'cifar'}", "--steps", 1,
         "--out", work / "run_cifar", "--quiet")
    cifar2 = work / "cifar2" / "cifar-10-batches-py"
    shutil.copytree(cifar, cifar2)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        (cifar2 / name).write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 2 ** 63 - 1) + b"abc")
    case("cifar_binbytes8", "train", "simclr", "--data", f"cifar10:{work / 'cifar2'}", "--steps", 1,
         "--out", work / "run_cifar2", "--quiet")

    # -- STL-10 binaries of the wrong size
    stl = work / "stl" / "stl10_binary"
    stl.mkdir(parents=True)
    for name in ("train_X.bin", "test_X.bin", "unlabeled_X.bin"):
        (stl / name).write_bytes(b"\x01" * 1000)
    for name in ("train_y.bin", "test_y.bin"):
        (stl / name).write_bytes(b"\x01" * 3)
    case("stl_wrong_size", "train", "simclr", "--data", f"stl10:{work / 'stl'}", "--steps", 1, "--out",
         work / "run_stl", "--quiet")

    # -- a checkpoint of another project's layout with damaged contents
    torch.save({"teacher": [1, 2, 3], "student": {"backbone.x": torch.zeros(2)}, "epoch": "x"}, work / "dino.pt")
    case("dino_damaged", "inspect", work / "dino.pt", "--format", "dino")

    # -- image folder with a symlink loop and a link out of the root
    img = work / "images"
    for c in ("a", "b"):
        (img / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(img / c / f"{i}.png")
    (img / "a" / "loop").symlink_to(img / "a")
    (img / "b" / "loop").symlink_to(img)
    (img / "a" / "out.png").symlink_to(png)
    (img / "a" / "etc").symlink_to(secret)
    case("imagefolder_links", "train", "simclr", "--data", f"imagefolder:{img}", "--steps", 1, "--batch-size", 4,
         "--backbone", "resnet18", "--set", "data.resolution=32",
         "--out", work / "run_img", "--quiet")

    # -- tables and tolerance files
    shutil.copy(FIXTURES / "tiny_dgp_table.csv", work / "base.csv")
    levels = ["&a [" + ",".join(['"lol"'] * 9) + "]"]
    for x, y in zip("abcdefgh", "bcdefghi"):
        levels.append(f"&{y} [" + ",".join([f"*{x}"] * 9) + "]")
    laughs = "default:\n  rtol: [" + ", ".join(levels) + "]\n"  # the last level holds 9**9 strings
    (work / "lol.yaml").write_text(laughs)
    case("yaml_billion_laughs", "check", work / "external_link.h5", "--baseline", work / "base.csv",
         "--tolerances", work / "lol.yaml")
    import pandas as pd

    df = pd.read_csv(work / "base.csv", keep_default_na=False)
    df.loc[df.index[:3], "analyzer"] = "../../escape/" + "x" * 300
    df.to_csv(work / "evil.csv", index=False)
    (work / "garbage.parquet").write_bytes(b"PAR1" + os.urandom(200) + b"PAR1")
    case("parquet_garbage", "report", work / "garbage.parquet", "--out", work / "figs_pq")
    bad = pd.read_csv(work / "base.csv", keep_default_na=False)
    bad.loc[bad.index[0], "value"] = float("inf")
    bad.to_csv(work / "inf.csv", index=False)
    case("csv_non_finite", "check", FIXTURES / "tiny_dgp.h5", "--baseline", work / "inf.csv")
    (work / "bad.toml").write_text("[default]\nrtol = 'x'\n[[rule]\n")
    case("toml_malformed", "check", FIXTURES / "tiny_dgp.h5", "--baseline", work / "base.csv", "--tolerances",
         work / "bad.toml")
    (work / "bin.toml").write_bytes(bytes(range(256)))
    case("toml_binary", "check", FIXTURES / "tiny_dgp.h5", "--baseline", work / "base.csv", "--tolerances",
         work / "bin.toml")
    case("report_names_from_table", "report", work / "evil.csv", "--out", work / "figs", "--formats", "png")

    # -- usage and absurd values
    case("usage_unknown_option", "analyze", work / "x.h5", "--bogus")
    case("usage_not_an_int", "train", "simclr", "--data", "dgp", "--steps", "abc")
    case("views_huge", "extract", FIXTURES / "tiny_simclr.pt", "--out", work / "v.h5", "--views", 100_000_000)
    case("style_spread_inf", "train", "simclr", "--data", "dgp", "--set", "data.style_spread=inf", "--steps", 2,
         "--out", work / "run_inf", "--quiet")
    case("batch_size_absurd", "train", "simclr", "--data", "dgp", "--batch-size", 10 ** 12, "--steps", 1,
         "--out", work / "run_bs", "--quiet")
    (work / "binary.toml").write_bytes(bytes(range(256)) * 4)
    case("config_binary", "train", "simclr", "--data", "dgp", "--config", work / "binary.toml", "--steps", 1,
         "--out", work / "run_cfg", "--quiet")

    # -- output locations
    (work / "folder.h5").mkdir()
    case("extract_out_is_folder", "extract", FIXTURES / "tiny_simclr.pt", "--out", work / "folder.h5", "--quiet")
    case("extract_disk_full", "extract", FIXTURES / "tiny_simclr.pt", "--out", work / "full.h5", "--quiet",
         fsize=300_000)
    case("train_disk_full", "train", "simclr", "--data", "dgp", "--steps", 2, "--out", work / "run_full", "--quiet",
         fsize=4_000)
    case("report_disk_full", "report", work / "base.csv", "--out", work / "figs_full", "--formats", "png",
         fsize=4_000)
    case("extract_out_on_read_only_fs", "extract", FIXTURES / "tiny_simclr.pt", "--out", "/proc/reprscope/e.h5",
         "--quiet")
    case("cache_on_read_only_fs", "analyze", FIXTURES / "tiny_simclr.pt", "--quiet", "--limit", 50,
         env={"REPRSCOPE_CACHE": "/proc/reprscope-cache"})
    case("table_on_read_only_fs", "analyze", FIXTURES / "tiny_dgp.h5", "--quiet", "--out", "/proc/t.csv")
    (work / "cachefile").write_text("x")
    case("cache_is_a_file", "analyze", FIXTURES / "tiny_simclr.pt", "--quiet", "--limit", 50,
         env={"REPRSCOPE_CACHE": str(work / "cachefile")})
    run = work / "run_twice"
    case("train_first", "train", "simclr", "--data", "dgp", "--steps", 2, "--out", run, "--quiet",
         "--set", "data.eval_size=100", "--batch-size", 32)
    case("train_again_without_resume", "train", "simclr", "--data", "dgp", "--steps", 2, "--out", run, "--quiet",
         "--set", "data.eval_size=100", "--batch-size", 32)

    listing_before = {p for p in work.rglob("*")}
    (root / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, str(HERE / "hostile_driver.py"), str(root / "cases.json")],
                          capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "REPRSCOPE_CACHE": str(work / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {r["name"]: r for r in json.loads(proc.stdout.strip().splitlines()[-1])}
    return {"results": got, "work": work, "secret": secret, "before": listing_before}


REFUSED = {
    "h5_external_link": "external link", "h5_raw_external": "external file", "h5_virtual": "virtual dataset",
    "h5_soft_loop": "soft link", "ckpt_checkpoint_path": "never chooses files", "ckpt_huge_width": "refused before",
    "ckpt_config_str": "config", "ckpt_state_list": "state_dict", "ckpt_step_str": "step",
    "safetensors_pickle": "not a readable", "safetensors_huge_header": "not a readable",
    "cifar_huge_shape": "declares shape", "cifar_binbytes8": "not a readable CIFAR batch",
    "yaml_billion_laughs": "rtol must be a finite number", "usage_unknown_option": "No such option", "usage_not_an_int": "Invalid value",
    "views_huge": "views must be at most", "style_spread_inf": "style_spread", "batch_size_absurd": "",
    "config_binary": "", "extract_out_is_folder": "is a folder", "extract_disk_full": "cannot write",
    "cache_is_a_file": "cache folder", "stl_wrong_size": "not an STL-10", "dino_damaged": "",
    "parquet_garbage": "cannot read table", "csv_non_finite": "", "toml_malformed": "", "toml_binary": "",
    "extract_out_on_read_only_fs": "", "cache_on_read_only_fs": "cache folder", "table_on_read_only_fs": "", "train_disk_full": "cannot write", "report_disk_full": "cannot write figures", "train_again_without_resume": "already holds a run",
    "ckpt_data_path_and_download": "needs a path", "raw_vit_many_blocks": "refused before building", "h5_spec_without_in_out": "",
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_with_one_line(results, name):
    r = results["results"][name]
    assert r["crash"] == "", r
    assert r["code"] == 2, r
    lines = [l for l in r["stderr"].splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r["stderr"]
    assert "Traceback" not in r["stderr"] + r["stdout"]
    assert REFUSED[name] in lines[0]


@pytest.mark.parametrize("name", ["imagefolder_links", "report_names_from_table", "train_first"])
def test_working_results_stay_inside(results, name):
    r = results["results"][name]
    assert r["crash"] == "" and r["code"] == 0, r


def test_nothing_outside_the_named_inputs_is_opened_or_listed(results):
    secret = str(results["secret"])
    # the audit sees what Python opens and lists: the image folder's own files and folders are there
    img = results["results"]["imagefolder_links"]["events"]
    assert any(kind == "open" and p.endswith("/images/a/0.png") for kind, p in img)
    assert any(kind == "list" and "/images" in p for kind, p in img)
    for name, r in results["results"].items():
        touched = [p for _, p in r["events"] if os.path.realpath(p).startswith(secret)]
        assert not touched, (name, touched)


def test_no_partial_or_stray_files(results):
    work = results["work"]
    assert not list(work.rglob("*.partial"))
    for name in ("run_cifar", "run_cifar2", "run_inf", "run_bs", "run_cfg", "run_full", "run_stl"):
        assert not list((work / name).glob("*.pt")) if (work / name).exists() else True, name
    assert not (work / "full.h5").exists() and not (work / "v.h5").exists()
    figs = work / "figs"
    assert all(p.parent == figs and len(p.name) <= 110 for p in figs.rglob("*") if p.is_file())
    assert not (work.parent / "escape").exists() and not (work / "escape").exists()


@pytest.mark.parametrize("command, given, says", [
    ("inspect", "table", "comma-separated values"),
    ("inspect", "store", "an HDF5 file"),
    ("check-baseline", "store", "an HDF5 file"),
    ("check-baseline", "checkpoint", "a zip archive"),
    ("inspect", "image", "a PNG image"),
])
def test_a_file_of_another_kind_is_named_in_one_line(tmp_path, command, given, says):
    """A table given as a checkpoint, a store or a checkpoint given as a baseline: the error says what the file
    is and what was expected, instead of a parser's message."""
    from typer.testing import CliRunner

    from reprscope_cli.main import app

    fix = Path(__file__).resolve().parent.parent / "fixtures"
    files = {"table": fix / "tiny_dgp_table.csv", "store": fix / "tiny_dgp.h5", "checkpoint": fix / "tiny_simclr.pt"}
    if given == "image":
        files["image"] = tmp_path / "x.pt"
        files["image"].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    args = (["inspect", str(files[given])] if command == "inspect"
            else ["check", str(fix / "tiny_dgp.h5"), "--baseline", str(files[given])])
    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    r = runner.invoke(app, args)
    err = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(err) == 1 and err[0].startswith("error:") and says in err[0], r.stderr
