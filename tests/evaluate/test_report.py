import json

import pytest

from lowbit.evaluate import Row, format_table, write_json


def _rows():
    return [Row("m", "fp32", None, "top1", 0.9, 0.9, 100, 4096),
            Row("m", "int8", "entropy", "top1", 0.8975, 0.9, 100, 1024, {"qat_epochs": 0})]


def test_drop_in_points_and_json(tmp_path):
    rows = _rows()
    assert rows[1].drop == pytest.approx(0.25)
    write_json(rows, tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["rows"][1] == {"model": "m", "scheme": "int8", "calibrator": "entropy", "metric": "top1",
                               "value": 0.8975, "fp32": 0.9, "drop": 0.25, "samples": 100, "size_bytes": 1024,
                               "qat_epochs": 0}
    assert data["rows"][0]["calibrator"] is None


def test_table_has_every_column():
    text = format_table(_rows())
    header = text.splitlines()[0].split()
    assert header[:4] == ["model", "scheme", "calibrator", "qat_epochs"]
    assert "89.75%" in text and "+0.25" in text and "1.0 KiB" in text and "4.0 KiB" in text
