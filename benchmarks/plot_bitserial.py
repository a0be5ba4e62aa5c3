"""The bit-serial figures: each model's metric against the bitlayers used (from `lowbit eval MODEL --json`)
with, where benchmarks/bitserial.py timed the model end to end, its H100 speed-up over fp32 on a
second axis.

    python3 benchmarks/plot_bitserial.py   # reads and writes benchmarks/results/bitserial_*.{json,png}
"""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from lowbit.evaluate.report import Row, plot_bitlayer_curve  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TIMED = {"mnist-mlp": "mnist-mlp", "char-lstm": "char-lstm-2048"}  # eval model -> benchmark model


def rows_from_json(data: dict) -> list[Row]:
    names = {f.name for f in fields(Row)} - {"extra"}
    rows = []
    for d in data["rows"]:
        d.pop("drop")
        rows.append(Row(**{k: d.pop(k) for k in names}, extra=d))
    return rows


def main():
    speed = json.loads((RESULTS / "bitserial.json").read_text())
    for path in sorted(RESULTS.glob("bitserial_*.json")):
        data = json.loads(path.read_text())
        if "rows" not in data:  # a timing probe of benchmarks/bitserial.py, not an eval job's output
            continue
        rows = rows_from_json(data)
        model = rows[0].model
        timed = {r["bitlayers"]: r["vs_fp32"] for r in speed.get("model_scaling", []) if r["model"] == TIMED.get(model)}
        out = path.with_suffix(".png")
        plot_bitlayer_curve(rows, out, budget=1.0, speedup=timed or None,
                            speed_label="H100 speed-up over fp32, batch 1")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
