"""bench.json (against the published schema), bench.csv, bench.md, the terminal table and
the PNG plots."""

from __future__ import annotations

import copy
import csv
import json
import struct

import jsonschema
import pytest

from edgemed.bench.report import CSV_COLUMNS, load_schema, markdown, table, write_reports
from edgemed.bench.runner import STAGES


def _validate(doc):
    jsonschema.Draft202012Validator(load_schema()).validate(json.loads(json.dumps(doc)))


@pytest.fixture(scope="module")
def written(tiny_doc, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-out")
    return out, write_reports(tiny_doc, out)


def test_schema_is_valid_and_accepts_the_document(tiny_doc, written):
    jsonschema.Draft202012Validator.check_schema(load_schema())
    out, _ = written
    _validate(json.loads((out / "bench.json").read_text()))


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d["configs"][0]["stages"].__setitem__("h2d", 0.0),  # a fake zero
        lambda d: d["configs"][0]["stages"].pop("end_to_end"),
        lambda d: d["configs"][0]["stages"]["infer"].__setitem__("p99_ms", -1.0),
        lambda d: d["configs"][0]["stability"].pop("reason"),
        lambda d: d["configs"][0].__setitem__("batch", 0),
        lambda d: d.__setitem__("configs", []),
        lambda d: d["configs"][0]["overhead"].__setitem__("p50", -0.0648),  # a mean-vs-mean
        lambda d: d["configs"][0].__setitem__("overhead_fraction", 0.1),  # schema 1's field
        lambda d: d["configs"][0]["stability"].pop("warmup_s"),
        lambda d: d["reference"].__setitem__("extra_calls", -1),
    ],
)
def test_schema_rejects_broken_documents(tiny_doc, breakage):
    doc = copy.deepcopy(tiny_doc)
    breakage(doc)
    with pytest.raises(jsonschema.ValidationError):
        _validate(doc)


def test_written_files(written):
    out, paths = written
    assert [p.name for p in paths] == [
        "bench.json",
        "bench.csv",
        "bench.md",
        "latency_cdf.png",
        "stages.png",
    ]
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]  # atomic writes


def test_csv_one_row_per_config_and_stage(tiny_doc, written):
    out, _ = written
    with open(out / "bench.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == len(tiny_doc["configs"]) * len(STAGES)
    assert [r["stage"] for r in rows[: len(STAGES)]] == list(STAGES)
    for row in rows:
        if row["stage"] in ("h2d", "d2h", "read"):  # CPU backend, synthetic input
            assert row["p50_ms"] == "" and row["absent_reason"]
            continue
        assert float(row["min_ms"]) <= float(row["p50_ms"]) <= float(row["max_ms"])
        # Fewer than 100 calls: no p99 (it would be the maximum), and the reason says so.
        assert int(row["count"]) < 100 and row["p99_ms"] == ""
        assert "too few for" in row["absent_reason"] and "p99" in row["absent_reason"]
    e2e = [r for r in rows if r["stage"] == "end_to_end"]
    assert [int(r["batch"]) for r in e2e] == [1, 2]
    for row, c in zip(e2e, tiny_doc["configs"], strict=True):
        assert float(row["overhead_p50"]) == c["overhead"]["p50"]
    assert all(r["overhead_p50"] == "" for r in rows if r["stage"] != "end_to_end")


def test_markdown_and_terminal_table(tiny_doc):
    md = markdown(tiny_doc, ["latency_cdf.png"])
    assert "| config | calls | e2e p50 ms |" in md and "![latency_cdf](latency_cdf.png)" in md
    assert "| overhead p50 | overhead p90 |" in md
    for c in tiny_doc["configs"]:
        n, ovh = c["stages"]["end_to_end"]["count"], c["overhead"]["p50"]
        assert f"| {c['name']} | {n} |" in md
        assert f"| {100 * ovh:.1f}% |" in md
        assert f"| {c['name']} | h2d | absent: " in md
        assert c["absent"]["percentiles"] in md  # why p99 is "—"
    text = table(tiny_doc)
    lines = text.splitlines()
    assert lines[0].startswith("config") and "e2e p50" in lines[0]
    assert len(lines) == 2 + len(tiny_doc["configs"])
    assert "reference" in lines[2]


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24]), len(data)


def test_plots_are_real_pngs_of_sane_size(written):
    out, _ = written
    for name in ("latency_cdf.png", "stages.png"):
        (w, h), nbytes = _png_size(out / name)
        assert 600 <= w <= 2000 and 250 <= h <= 2000, (name, w, h)
        assert 10_000 < nbytes < 2_000_000, (name, nbytes)
