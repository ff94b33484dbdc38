"""Extraction over the processes of a torchrun job (gloo on the CPU): the store equals the single-process one,
and a rank that dies leaves no store that looks complete."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest


def _run(args, nproc=None, env_extra=None, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    head = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
            if nproc else [sys.executable])
    return subprocess.run(head + ["-m", "reprscope", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _contents(path: Path):
    """Every dataset's values and every attribute, the creation time left out."""
    out = {}
    with h5py.File(path, "r") as f:
        out["attrs"] = {k: (json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v)
                        for k, v in f.attrs.items() if k != "created"}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = (obj[()], dict(obj.attrs))
            else:
                out[name + "/"] = dict(obj.attrs)
        f.visititems(visit)
    return out


@pytest.fixture(scope="module")
def single_and_sharded(tmp_path_factory, tiny_ckpt):
    d = tmp_path_factory.mktemp("dist_extract")
    common = ["extract", tiny_ckpt, "--limit", 300, "--batch-size", 64, "--views", 2, "--quiet"]
    one = _run(common + ["--out", d / "one.h5"])
    assert one.returncode == 0, one.stderr[-2000:]
    two = _run(common + ["--out", d / "two.h5"], nproc=2)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    return d


def test_two_processes_write_the_store_one_process_writes(single_and_sharded):
    a, b = _contents(single_and_sharded / "one.h5"), _contents(single_and_sharded / "two.h5")
    assert set(a) == set(b) and len([k for k in a if k.startswith("embeddings/") and not k.endswith("/")]) >= 3
    for k in a:
        if isinstance(a[k], tuple):
            assert np.array_equal(a[k][0], b[k][0]), k
            assert a[k][1] == b[k][1], k
        else:
            assert a[k] == b[k], k
    assert not list(single_and_sharded.glob(".*.partial"))  # the shards are gone


def test_a_rank_dying_mid_extraction_leaves_no_store_and_the_others_stop_with_one_line(tmp_path, tiny_ckpt):
    out = tmp_path / "dead.h5"
    res = _run(["extract", tiny_ckpt, "--limit", 300, "--batch-size", 32, "--views", 1, "--quiet", "--out", out],
               nproc=2, env_extra={"REPRSCOPE_FAULT_RANK": "1"})
    assert res.returncode != 0
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".dead.h5.") and
                                     p.name.endswith(".partial") and _owner_alive(p)]
    ours = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and "no store was written" in ours[0], res.stderr[-2000:]


def _owner_alive(p: Path) -> bool:
    """A partial whose process still runs (a dead rank's own shard is left for the next writer to remove, as any
    crashed extraction's partial is)."""
    try:
        os.kill(int(p.name.split(".")[-2]), 0)
    except (ValueError, ProcessLookupError):
        return False
    return True


def test_two_processes_analyze_a_store_to_the_one_process_table(single_and_sharded, tiny_h5):
    """`torchrun -m reprscope analyze STORE` over every analyzer (the split ones on both ranks, the others on
    rank 0): the table equals the one-process table to 1e-9 relative."""
    import pandas as pd

    d = single_and_sharded
    args = ["analyze", tiny_h5, "--quiet"]
    one = _run(args + ["--out", d / "one.csv"])
    assert one.returncode == 0, one.stderr[-2000:]
    two = _run(args + ["--out", d / "two.csv"], nproc=2)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    a, b = pd.read_csv(d / "one.csv"), pd.read_csv(d / "two.csv")
    assert len(a) == len(b) > 100 and set(a["analyzer"]) == set(b["analyzer"])
    key = [c for c in a.columns if c != "value"]
    m = a.merge(b, on=key, how="outer", suffixes=("_1", "_2"), indicator=True)
    assert (m["_merge"] == "both").all()
    v1, v2 = m["value_1"].to_numpy(float), m["value_2"].to_numpy(float)
    same_nan = np.isnan(v1) == np.isnan(v2)
    assert same_nan.all()
    ok = ~np.isnan(v1)
    assert np.allclose(v2[ok], v1[ok], rtol=1e-9, atol=1e-12), m.loc[ok][~np.isclose(v2[ok], v1[ok], rtol=1e-9, atol=1e-12)]


def test_a_call_from_one_rank_of_someone_elses_process_group_stays_single_process(tiny_h5):
    """A user's DDP script that calls reprscope on rank 0 alone must not wait for the other ranks: the work is
    split only inside a job reprscope set up itself (`reprscope extract/analyze` under torchrun)."""
    script = Path(__file__).parent / "ddp" / "user_group.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          str(script), str(tiny_h5)], capture_output=True, text=True, env=env, timeout=180)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]


def test_every_split_analyzer_shares_its_passes_to_the_one_process_table(tmp_path):
    """A labelled store read in chunks of 48 samples (and batches of 32–40) so that every pass of every analyzer
    declared ``split`` — the NaN scan, moments, center's two passes, vicreg's invariance pass, lidar's
    cross-products, the k-NN candidate lists, matrix information's batches, similarity's cross-products, RBF CKA
    batches and mutual k-NN blocks — is divided between the two ranks; the table, bootstrap intervals included
    (rank 0 resamples alone), equals the one-process table to 1e-9."""
    import pandas as pd

    import reprscope

    g = np.random.default_rng(0)
    n = 300
    labels = g.integers(0, 4, n)
    latents = g.normal(size=(n, 3))
    base = np.eye(4)[labels] @ g.normal(size=(4, 24)) + 0.5 * g.normal(size=(n, 24)) + 3.0  # an offset, classes
    base[:, :3] += latents
    enc = np.stack([base + 0.2 * g.normal(size=base.shape) for _ in range(3)])
    proj = np.maximum(enc @ g.normal(size=(24, 8)), 0.0)
    tiny_h5 = reprscope.extract({"encoder": enc, "projector": proj}, out=tmp_path / "labelled.h5", labels=labels,
                                latents=latents, views=["clean", "aug1", "aug2"])
    with h5py.File(tiny_h5, "r+") as f:  # one sample every analyzer leaves out (the NaN scan is split too)
        f["embeddings/encoder"][1, 17, 5] = np.nan
    script = Path(__file__).parent / "ddp" / "small_chunks.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(script), str(tiny_h5), str(tmp_path / "one.csv")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          str(script), str(tiny_h5), str(tmp_path / "two.csv")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    assert "identifiability ran on rank 0 alone" in two.stdout and "rank 0 alone" not in one.stdout
    a, b = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(tmp_path / "two.csv")
    assert set(a["analyzer"]) == {"spectrum", "vicreg", "lidar", "center", "knn", "matrix_information", "similarity",
                                  "identifiability"}
    assert a["value_lo"].notna().any()  # bootstrap intervals (computed by rank 0 alone in the job)
    numbers = ["value", "value_lo", "value_hi"]
    key = [c for c in a.columns if c not in numbers]
    m = a.merge(b, on=key, how="outer", suffixes=("_1", "_2"), indicator=True)
    assert (m["_merge"] == "both").all() and len(a) == len(b)
    for c in numbers:
        v1, v2 = m[c + "_1"].to_numpy(float), m[c + "_2"].to_numpy(float)
        assert (np.isnan(v1) == np.isnan(v2)).all()
        ok = ~np.isnan(v1)
        assert np.allclose(v2[ok], v1[ok], rtol=1e-9, atol=1e-12), (c, m.loc[ok][~np.isclose(v2[ok], v1[ok], rtol=1e-9, atol=1e-12)])
