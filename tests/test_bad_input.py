"""Bad input, as a hostile new user types it: every case is one line on stderr naming the bad value, exit
code 2, no traceback, and nothing written into the run directory."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from rcdm_viz.cli import main


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path: Path, side: int = 20000) -> Path:
    """A valid ~60 KB 1-bit PNG claiming side x side pixels (400 Mpx at 20000)."""
    rows = (b"\x00" + b"\x00" * ((side + 7) // 8)) * side
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    body = _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows, 9)) + _chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


# A YAML flow list whose level i repeats level i - 1 ten times: the last stands for 10^6 strings.
_ALIAS_BOMB = "[&a lol, " + ", ".join(
    f"&{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 10) + "]" for i in range(1, 7)
) + "]"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("bad")
    made = {
        "latin1.yaml": "ssl:\n  lr: 0.1 # caf\xe9\n".encode("latin-1"),
        "broken.yaml": b"ssl:\n  lr: [0.1\n",
        "list.yaml": b"- 1\n- 2\n",
        "unknown.yaml": b"ssl:\n  nope: 1\n",
        "text.png": b"this is not a png\n",
        "empty.jpg": b"",
        "deep.yaml": b"ssl: " + b"[" * 5000 + b"]" * 5000 + b"\n",
        "aliasbomb.yaml": b"ssl:\n  lr: " + _ALIAS_BOMB.encode() + b"\n",
        "afile": b"a run directory that is a file\n",
        # a DDS header whose pixel format flags PIL does not know (NotImplementedError)
        "flags.dds": b"DDS " + struct.pack("<7I", 124, 0x1007, 4, 4, 0, 0, 0) + bytes(44)
        + struct.pack("<2I", 32, 0x80000000) + bytes(104),
    }
    for name, data in made.items():
        (base / name).write_bytes(data)
    bomb_png(base / "bomb.png")
    run = base / "badcfg"
    run.mkdir()
    (run / "config.yaml").write_bytes("data:\n  seed: \xff\xfe\n".encode("latin-1"))
    return {name: base / name for name in (*made, "bomb.png", "badcfg")}


def _set(*overrides: str) -> list[str]:
    return ["train-decoder", "--layer", "trunk", *(a for o in overrides for a in ("--set", o))]


def _enc(*overrides: str) -> list[str]:
    return ["train-encoder", *(a for o in overrides for a in ("--set", o))]


def _sample(*flags: str) -> list[str]:
    return ["sample", "x.png", *flags]


# (argv, what the message must name). {f:NAME} is replaced by the path of a prepared file.
CASES = [
    (_set("decoder.lr=nan"), "nan"),
    (_set("decoder.lr=-1"), "-1"),
    (_set("decoder.lr=inf"), "inf"),
    (_set("decoder.lr=0"), "decoder.lr"),
    (_set("decoder.checkpoint_every=0"), "decoder.checkpoint_every"),
    (_set("decoder.log_every=0"), "decoder.log_every"),
    (_set("decoder.ema_decay=2"), "decoder.ema_decay"),
    (_set("decoder.p_uncond=1.5"), "1.5"),
    (_set("decoder.p_uncond=-0.1"), "-0.1"),
    (_set("decoder.steps=0"), "decoder.steps"),
    (_set("decoder.batch_size=-4"), "-4"),
    (_set("decoder.block_out_channels=[]"), "decoder.block_out_channels"),
    (_set("decoder.block_out_channels=[0,16]"), "decoder.block_out_channels"),
    (_set("decoder.resolution=0"), "decoder.resolution"),
    (_set("decoder.snr_gamma=-1"), "decoder.snr_gamma"),
    (_set("decoder.timestep_bias=.nan"), "decoder.timestep_bias"),
    (_set("decoder.warmup_steps=-5"), "-5"),
    (_set("decoder.grad_accum_steps=0"), "decoder.grad_accum_steps"),
    (_set("decoder.ema_warmup=maybe"), "maybe"),
    (_set("decoder.beta_schedule=cosine"), "cosine"),
    (_set("decoder.nope=1"), "decoder.nope"),
    (_set("decoder.lr"), "decoder.lr"),
    (_enc("ssl.epochs=0"), "ssl.epochs"),
    (_enc("ssl.epochs=-3"), "-3"),
    (_enc("ssl.epochs=[1"), "[1"),
    (_enc("ssl.epochs=abc"), "abc"),
    (_enc("ssl.lr=0"), "ssl.lr"),
    (_enc("ssl.temperature=-0.1"), "-0.1"),
    (_enc("ssl.batch_size=1"), "ssl.batch_size"),
    (_enc("ssl.byol_momentum=1.5"), "1.5"),
    (_enc("ssl.method=nope"), "nope"),
    (_enc("ssl.warmup_epochs=-inf"), "-inf"),
    (_enc("data.n_train=0"), "data.n_train"),
    (_enc("data.resolution=4"), "data.resolution"),
    (_enc("data.source=web"), "web"),
    (_enc("data.seed=-1"), "data.seed"),
    (_enc("encoder.width=0"), "encoder.width"),
    (_enc("views.flip_p=2"), "views.flip_p"),
    (_enc("probe.knn_k=0"), "probe.knn_k"),
    (_enc("probe.ridge_holdout=1"), "probe.ridge_holdout"),
    (_enc("scores.gallery=1"), "scores.gallery"),
    (_enc("quickstart.n_images=0"), "quickstart.n_images"),
    (_sample("--n", "0"), "sample.n"),
    (_sample("--guidance", "nan"), "nan"),
    (_sample("--guidance", "inf"), "inf"),
    (_sample("--guidance=-1e30"), "-1e+30"),
    (_sample("--steps", "0"), "sample.steps"),
    (_sample("--set", "sample.sampler=euler"), "euler"),  # --sampler itself: argparse choices (test_cli)
    (["sample", "missing.png"], "missing.png"),
    (["sample", "{f:text.png}"], "text.png"),
    (["sample", "{f:empty.jpg}"], "empty.jpg"),
    (["sample", "{f:flags.dds}"], "flags.dds"),
    (["sample", "{f:bomb.png}"], "bomb.png"),
    (["train-encoder", "--preset", "nonexistent"], "nonexistent"),
    (["train-encoder", "--preset", "{f:latin1.yaml}"], "latin1.yaml"),
    (["train-encoder", "--preset", "{f:broken.yaml}"], "broken.yaml"),
    (["train-encoder", "--preset", "{f:list.yaml}"], "list.yaml"),
    (["train-encoder", "--preset", "{f:unknown.yaml}"], "ssl.nope"),
    (["probe", "--run", "{f:badcfg}"], "config.yaml"),
    (["train-decoder", "--layer", "trunk"], "has no encoder"),
    (["report", "--runs", "no-such-run"], "no-such-run"),
    (["train-encoder", "--preset", "{f:deep.yaml}"], "deep.yaml"),
    (["train-encoder", "--preset", "{f:aliasbomb.yaml}"], "ssl.lr"),
    (_enc("ssl.lr=" + _ALIAS_BOMB), "ssl.lr"),
    (_enc("ssl.seed=" + "9" * 5000), "ssl.seed"),
    (_enc("ssl.epochs=99999999999999999999"), "ssl.epochs"),
    (_enc("ssl.batch_size=99999999999999999999"), "ssl.batch_size"),
    (_enc("encoder.head=0-0"), "0-0"),
    (["probe", "--run", "{f:afile}"], "afile"),
    (["app", "--runs", "no-such-root"], "no-such-root"),
    (_enc("data.resolution=99999999999"), "data.resolution=99999999999"),
    (_enc("encoder.width=100000000000"), "encoder.width=100000000000"),
    (_enc("encoder.head=1000000000000-1"), "encoder.head=1000000000000-1"),
    (_enc("views.size=100000000000"), "views.size=100000000000"),
    (_enc("data.n_train=99999999999"), "data.n_train=99999999999"),
    (_set("decoder.feature_batch_size=99999999999999"), "decoder.feature_batch_size=99999999999999"),
    (_enc("data.decode_workers=-1"), "-1"),
    (_enc("data.n_train=64", "ssl.batch_size=100"), "ssl.batch_size 100"),
    (["cache", "--data", "{f:afile}", "--resolution", "8", "--out", "c", "--workers=-1"], "--workers"),
    (["cache", "--data", "{f:afile}", "--resolution", "8", "--out", "c", "--chunk", "0"], "--chunk"),
]


def _fill(arg: str, files: dict[str, Path]) -> str:
    return str(files[arg[3:-1]]) if arg.startswith("{f:") else arg


@pytest.mark.parametrize(("argv", "named"), CASES, ids=[" ".join(a)[-60:] for a, _ in CASES])
def test_bad_input_is_one_line_naming_the_value(argv, named, files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [_fill(a, files) for a in argv]
    runless = argv[0] in ("app", "report", "cache") or "--run" in argv
    run = [] if runless else ["--run", str(tmp_path / "run")]
    assert main([*argv, *run, "--no-progress"] if argv[0] != "app" else argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and len(err) < 2500, err[:2500]
    assert err.startswith("rcdm-viz: error: ") and named in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # validated before anything is written


def test_the_table_is_long_enough():
    assert len(CASES) >= 40
