"""`scc demo` end to end on tiny synthetic settings: every stage runs and the report folder is complete."""

import json

from scc import demo


def test_demo_writes_a_complete_report(tmp_path, monkeypatch):
    monkeypatch.delenv("SCC_DATA", raising=False)  # no arguments means synthetic data, even where SCC_DATA is set
    out = tmp_path / "demo"
    sets = ["img_size=64", "weak_steps=8", "strong_steps=4", "train_per_class=6", "pairs_per_class=8",
            "eval_pairs=6", "pictures=1"]
    assert demo.main(["--out", str(out)] + sum((["--set", s] for s in sets), [])) == 0
    report = (out / "report.md").read_text()
    for name in ("nearest-neighbour", "untrained-pipeline", "weak"):
        assert f"| {name} |" in report
        rep = json.loads((out / f"eval-{name}.json").read_text())
        assert rep["protocol"]["pairs_evaluated"] == 6
    assert (out / "pck_per_category.png").stat().st_size > 1000
    summary = json.loads((out / "pseudo-labels" / "summary.json").read_text())
    if summary["pairs"]["trn"]:  # a few steps may or may not yield pairs that pass the check; both are reported
        assert "| strong-on-pseudo-labels |" in report and (out / "strong" / "model.pt").is_file()
        assert (out / "pictures" / "pseudo-labels-0.png").is_file()
    else:
        assert "No pair passed the consistency check" in report
    assert (out / "pictures" / "transfer-0.png").is_file() and "pictures/transfer-0.png" in report
    for cfg in ("demo.yaml", "weak/config.yaml", "pseudo-labels/config.yaml"):
        assert (out / cfg).is_file(), cfg
    assert "Precision against the generator's truth" in report or summary["pairs"] == {"trn": 0, "val": 0, "test": 0}


def test_demo_missing_data_is_a_clear_error(tmp_path, capsys):
    assert demo.main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "imagenette" in capsys.readouterr().err
