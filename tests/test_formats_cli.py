"""Bad checkpoint files on the command line: corrupt, truncated, empty, not a checkpoint, unrecognised, unsafe.

Each case, for ``analyze``, ``extract`` and ``inspect``: exit code 2, one line on stderr starting with
``error:`` that says what was found and what was expected, no traceback, and nothing written (no table, no
store, no cache entry). ``inspect`` on a readable file it cannot load lists what the file holds on stdout.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from reprscope_cli.main import app


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


class _Evil:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _real(tmp: Path) -> bytes:
    p = tmp / "_real.pth"
    torch.save({"state_dict": torchvision.models.resnet18().state_dict(), "epoch": 1}, p)
    data = p.read_bytes()
    p.unlink()
    return data


def _write(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        p = tmp / name
        p.write_bytes(data)
        return p
    return make


def _torch(name: str, obj) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        p = tmp / name
        torch.save(obj(tmp) if callable(obj) else obj, p)
        return p
    return make


def _truncated(tmp: Path) -> Path:
    data = _real(tmp)
    p = tmp / "truncated.pth"
    p.write_bytes(data[: len(data) // 3])
    return p


def _corrupt(tmp: Path) -> Path:
    """The archive's first bytes overwritten: no zip magic, no pickle either."""
    data = _real(tmp)
    p = tmp / "corrupt.pth"
    p.write_bytes(bytes(64) + data[64:])
    return p


def _safetensors(truncate: bool) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        from safetensors.torch import save_file

        p = tmp / ("trunc.safetensors" if truncate else "other.safetensors")
        save_file({"enc.w": torch.zeros(128, 128), "enc.b": torch.zeros(3)}, str(p))
        if truncate:
            data = p.read_bytes()
            p.write_bytes(data[: len(data) // 2])
        return p
    return make


def _mismatch(tmp: Path) -> Dict:
    sd = {"module.encoder_q." + k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    sd["module.encoder_q.fc.weight"] = torch.zeros(16, 512)
    sd["module.encoder_q.fc.bias"] = torch.zeros(16)
    sd["module.encoder_q.layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    return {"state_dict": sd, "epoch": 1}


#: name → (make file, what the one line must say)
CASES: Dict[str, Tuple[Callable[[Path], Path], str]] = {
    "empty": (_write("empty.pth", b""), "is empty; expected a PyTorch checkpoint"),
    "truncated": (_truncated, "not a readable PyTorch checkpoint (PytorchStreamReader failed reading zip archive"),
    "corrupt": (_corrupt, "not a readable PyTorch checkpoint"),
    "text": (_write("notes.pth", b"this is not a checkpoint\n"), "is a text file, not a checkpoint"),
    "noise": (_write("noise.pth", bytes(range(256)) * 16), "not a readable PyTorch checkpoint"),
    "list": (_torch("list.pth", [torch.zeros(2)]), "holds a list, not a checkpoint dict"),
    "unrecognised": (_torch("other.pth", {"model": {"w": torch.zeros(2)}, "epoch": 3}),
                     "is a PyTorch file but not a checkpoint format reprscope knows (top-level keys: model, epoch)"),
    "unsafe": (_torch("evil.pth", lambda t: {"model": {"w": torch.zeros(1)}, "x": _Evil(str(t / "MARKER"))}),
               "needs arbitrary unpickling, which reprscope refuses"),
    "unsafe_plain_pickle": (lambda t: _write("evil2.pth", pickle.dumps(_Evil(str(t / "MARKER")), protocol=2))(t),
                            "needs arbitrary unpickling, which reprscope refuses"),
    "safetensors_truncated": (_safetensors(True), "is not a readable safetensors file"),
    "safetensors_unrecognised": (_safetensors(False), "is a safetensors file but not a checkpoint format"),
    "weights_do_not_fit": (_torch("moco.pth", _mismatch), "layer2.0.conv1.weight [128, 64, 5, 5]"),
    "missing": (lambda t: t / "missing.pth", "does not exist"),
}


def _argv(command: str, ckpt: Path, out: Path):
    if command == "analyze":
        return ["analyze", ckpt, "--data", "dgp", "--out", out / "t.csv", "--quiet"]
    if command == "extract":
        return ["extract", ckpt, "--data", "dgp", "--out", out / "e.h5", "--quiet"]
    return ["inspect", ckpt]


@pytest.mark.parametrize("command", ["analyze", "extract", "inspect"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_checkpoint_is_one_line_exit_2_nothing_written(tmp_path, case, command):
    make, expected = CASES[case]
    src = tmp_path / "src"
    src.mkdir()
    ckpt = make(src)
    out = tmp_path / "out"
    out.mkdir()
    before = set(src.iterdir())
    res = _runner().invoke(app, [str(a) for a in _argv(command, ckpt, out)])
    assert res.exit_code == 2, f"{case}/{command}: exit {res.exit_code}\n{res.output}\n{res.exception!r}"
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in res.output
    assert not (src / "MARKER").exists()
    assert list(out.iterdir()) == [] and set(src.iterdir()) == before
    cache = tmp_path / "cache"
    assert not cache.exists() or not list(cache.rglob("*.h5"))
    if command != "inspect":
        assert res.stdout == ""
    if case == "unrecognised" and command == "inspect":  # it says what the file holds
        assert "top-level keys:" in res.stdout and "tensors under 'model':" in res.stdout
    if case == "unrecognised" and command != "inspect":
        assert "`reprscope inspect" in lines[0]
