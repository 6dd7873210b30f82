"""``bench/report.py``: the docs' results tables are what the result files say, and it keeps them so."""

from __future__ import annotations

import json

import harness
import pytest
import report


def _result_file(folder, name, results, command="python bench/optimizer_step.py --repeats 7", smoke=False):
    path = folder / f"{name}.json"
    path.write_text(json.dumps({
        "bench": name, "command": command, "date": "2026-12-07 20:00 UTC", "commit": "abc1234",
        "machine": {"cpu": "Some CPU", "cores": 2, "cpu_bf16": True, "threads": 2, "gpu": None, "python": "3.11",
                    "torch": "2.13.0+cpu"},
        "smoke": smoke, "results": results,
    }))
    return path


OPTIMIZER_ROWS = [
    {"row": "foreach", "ms_per_step": 16.6, "min_ms": 14.4, "max_ms": 18.6, "vs_foreach": 1.0,
     "vs_foreach_range": [1.0, 1.0], "max_abs_difference": 0.0},
    {"row": "fused", "ms_per_step": 4.93, "min_ms": 4.28, "max_ms": 5.34, "vs_foreach": 3.37,
     "vs_foreach_range": [2.79, 3.87], "max_abs_difference": 7.2e-7},
]


def test_the_docs_tables_are_what_their_result_files_say():
    """Every generated table in docs/ equals its rendering from bench/results/ (edit the file, or rerun the bench
    and ``python bench/report.py``, never the table)."""
    assert report.main(["--check", "--no-plots"]) == 0


def test_a_table_is_rendered_between_its_markers_and_a_hand_edit_is_caught(tmp_path):
    results, docs = tmp_path / "results", tmp_path / "docs"
    results.mkdir(), docs.mkdir()
    _result_file(results, "optimizer_step", OPTIMIZER_ROWS)
    page = docs / "page.md"
    page.write_text("Intro.\n\n<!-- results: optimizer_step.json -->\nold\n<!-- end results -->\n\nAfter.\n")
    arguments = ["--docs", str(docs), "--results", str(results), "--no-plots"]
    assert report.main([*arguments, "--check"]) == 1
    assert report.main(arguments) == 0
    text = page.read_text()
    assert text.startswith("Intro.\n\n<!-- results: optimizer_step.json -->\n`python bench/optimizer_step.py --repeats 7`")
    assert "2 cores of Some CPU, native bf16" in text and "commit abc1234" in text
    assert "| fused | 4.93 (4.28–5.34) | 3.37× (2.79–3.87) | 7.2e-07 |" in text
    assert text.endswith("<!-- end results -->\n\nAfter.\n") and "old" not in text
    assert report.main([*arguments, "--check"]) == 0
    page.write_text(text.replace("4.93 (", "4.50 ("))  # a figure edited by hand
    assert report.main([*arguments, "--check"]) == 1


def test_a_smoke_run_or_a_missing_file_is_refused(tmp_path):
    results, docs = tmp_path / "results", tmp_path / "docs"
    results.mkdir(), docs.mkdir()
    (docs / "page.md").write_text("<!-- results: optimizer_step.json -->\n<!-- end results -->\n")
    arguments = ["--docs", str(docs), "--results", str(results), "--no-plots"]
    with pytest.raises(SystemExit, match="not in"):
        report.main(arguments)
    _result_file(results, "optimizer_step", OPTIMIZER_ROWS, smoke=True)
    with pytest.raises(SystemExit, match="smoke"):
        report.main(arguments)


def test_every_bench_result_file_has_a_renderer(tmp_path):
    """Each tracked result file renders (no bench's file left without a table), with the harness's header."""
    for path in sorted(harness.RESULTS.glob("*.json")):
        entry = report.load(path)
        assert entry["command"].startswith(f"python bench/{entry['bench']}.py")
        assert report.render(path).startswith(f"`{entry['command']}`")


def test_plots_are_drawn_from_the_result_files(tmp_path):
    pytest.importorskip("matplotlib")
    results, docs = tmp_path / "results", tmp_path / "docs"
    results.mkdir(), docs.mkdir()
    _result_file(results, "train_throughput", [
        {"row": "hf-own-bf16", "dtype": "bf16", "target_tokens_per_s": 3000.0, "range": [2800, 3100], "padding": 0.13,
         "vs_hf_own": 1.0, "vs_hf_own_range": [1.0, 1.0], "peak_share": 0.2},
        {"row": "ours-bf16-mixed", "dtype": "bf16", "target_tokens_per_s": 4800.0, "range": [4500, 4900],
         "padding": 0.09, "vs_hf_own": 1.6, "vs_hf_own_range": [1.5, 1.7], "peak_share": 0.3},
    ], command="python bench/train_throughput.py")
    assert report.main(["--docs", str(docs), "--results", str(results)]) == 0
    png = docs / "figures" / "train_throughput.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
