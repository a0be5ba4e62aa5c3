"""The command line: help, one-line errors, quantize -> info on a user model."""

import json
import subprocess
import sys
import textwrap

import pytest

from lowbit.cli import main


def test_help_explains_every_option(capsys):
    for cmd in (["eval"], ["quantize"], ["finetune"], ["info"]):
        with pytest.raises(SystemExit) as exit_info:
            main(cmd + ["--help"])
        assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--json", "--plot", "--calibrators", "--schemes", "--limit", "--calib-samples", "--device",
                   "--scheme", "--calibrator", "--percentile", "--calib-data", "--skip", "--option", "--output",
                   "--qat-epochs", "--train-data", "--preset", "--epochs", "--lr", "--checkpoint-dir", "--resume"):
        assert option in out
    assert "module:function" in out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "eval" in capsys.readouterr().out


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "usermodel.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def build():
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))

        def calib():
            g = torch.Generator().manual_seed(0)
            return [torch.randn(4, 3, 8, 8, generator=g) for _ in range(3)]

        def data():
            g = torch.Generator().manual_seed(1)
            test = [(torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 5, (16,), generator=g))
                    for _ in range(2)]
            return calib(), test

        def train():
            g = torch.Generator().manual_seed(2)
            return [(torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 5, (16,), generator=g))
                    for _ in range(3)]

        def not_a_model():
            return 42
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_quantize_user_model_then_info(user_module, capsys):
    out = user_module / "q.safetensors"
    code = main(["quantize", "usermodel:build", "--calib-data", "usermodel:calib", "-o", str(out),
                 "--calibrator", "percentile", "--percentile", "99.9", "--option", "act_unsigned=auto",
                 "--no-progress"])
    assert code == 0 and out.exists()
    assert "2 layers in int8 (percentile calibration)" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "0: conv2d 3->8" in text and "3: linear 288->5" in text and "u8" in text
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"]["3"]["calibrator"] == "percentile"


def test_quantize_w4a8_with_dpq_then_info(user_module, capsys):
    out = user_module / "w.safetensors"
    code = main(["quantize", "usermodel:build", "--calib-data", "usermodel:calib", "-o", str(out), "--scheme", "w4a8",
                 "--algorithm", "dpq", "--gar", "--option", "group_size=64", "--no-progress"])
    assert code == 0 and "1 layer in w4a8" in capsys.readouterr().out  # the conv stays float
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3: linear 288->5  w4a8  activation=static group_size=64 symmetric=False  algorithm=dpq+gar  damp=0.01" in text


def test_eval_user_model_writes_json_and_plot(user_module, capsys):
    code = main(["eval", "usermodel:build", "--data", "usermodel:data", "--calibrators", "max,entropy",
                 "--schemes", "int8", "--json", "r.json", "--plot", "r.png", "--no-progress", "--device", "cpu"])
    assert code == 0
    rows = json.loads((user_module / "r.json").read_text())["rows"]
    assert [(r["scheme"], r["calibrator"]) for r in rows] == [("fp32", None), ("int8", "max"), ("int8", "entropy")]
    for r in rows:
        assert set(r) >= {"model", "scheme", "calibrator", "metric", "value", "fp32", "drop", "samples", "size_bytes"}
        assert r["samples"] == 32 and 0 <= r["value"] <= 1
        assert r["drop"] == pytest.approx((r["fp32"] - r["value"]) * 100)
    assert rows[1]["size_bytes"] < rows[0]["size_bytes"] / 2
    assert (user_module / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert "int8" in capsys.readouterr().out


def test_eval_int4_with_qat_rows(user_module):
    code = main(["eval", "usermodel:build", "--data", "usermodel:data", "--schemes", "int8,int4", "--calibrators",
                 "max", "--qat-epochs", "1", "--train-data", "usermodel:train", "--json", "r.json", "--no-progress"])
    assert code == 0
    rows = json.loads((user_module / "r.json").read_text())["rows"]
    assert [(r["scheme"], r.get("qat_epochs")) for r in rows] == [("fp32", None), ("int8", 0), ("int4", 0),
                                                                 ("int4", 1)]


def test_finetune_user_model_saves_and_resumes(user_module, capsys):
    argv = ["finetune", "usermodel:build", "--calib-data", "usermodel:calib", "--train-data", "usermodel:train",
            "--eval-data", "usermodel:train", "--epochs", "2", "--checkpoint-dir", ".", "-o", "q4.safetensors",
            "--calibrator", "max", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "before fine-tuning: top-1" in out and "epoch 2: loss" in out and "layers in int4" in out
    assert (user_module / "finetune.safetensors").exists() and (user_module / "q4.safetensors").exists()
    assert main(["info", "q4.safetensors"]) == 0
    assert "weight 8-bit" in capsys.readouterr().out  # int4's edges: both layers of this model stay 8-bit
    assert main(argv[:9] + ["3"] + argv[10:] + ["--resume"]) == 0
    out = capsys.readouterr().out
    assert "epoch 3: loss" in out and "before fine-tuning" not in out
    assert main(argv + ["--scheme", "int8", "--resume"]) == 2
    assert "was quantized as int4" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["quantize", "nosuchmod:build", "--calib-data", "x:y", "-o", "q.safetensors"], "cannot import 'nosuchmod'"),
    (["quantize", "usermodel:nothing", "--calib-data", "usermodel:calib", "-o", "q.safetensors"],
     "has no attribute 'nothing'"),
    (["quantize", "usermodel:not_a_model", "--calib-data", "usermodel:calib", "-o", "q.safetensors"],
     "returned int, not a torch.nn.Module"),
    (["quantize", "usermodel:build", "-o", "q.safetensors"], "needs --calib-data"),
    (["quantize", "usermodel:build", "--calib-data", "usermodel:calib", "-o", "nodir/q.safetensors"],
     "folder nodir does not exist"),
    (["quantize", "usermodel:build", "--calib-data", "usermodel:calib", "-o", "q.safetensors", "--option",
      "weight_bits=20"], "weight_bits=20 is invalid"),
    (["info", "missing.safetensors"], "missing.safetensors does not exist"),
    (["eval", "usermodel:build"], "needs --data"),
    (["eval", "mnist_mlp"], "'mnist_mlp' is not a built-in model (smollm2, mnist-mlp, char-lstm"),
    (["quantize", "usermodel", "-o", "q.safetensors"], "MODEL 'usermodel' is not module:function"),
    (["finetune", "mymodel", "-o", "q.safetensors"], "MODEL 'mymodel' is not module:function"),
    (["eval", "usermodel:build", "--data", "usermodel:data", "--qat-epochs", "2"], "needs --train-data"),
    (["finetune", "usermodel:build", "--calib-data", "usermodel:calib", "-o", "q.safetensors"], "needs --train-data"),
    (["finetune", "-o", "q.safetensors", "--resume"], "--resume needs --checkpoint-dir"),
    (["finetune", "-o", "q.safetensors", "--checkpoint-dir", "nodir/sub"], "--checkpoint-dir nodir/sub does not exist"),
    (["quantize", "usermodel:build", "--calib-data", "usermodel:calib", "-o", "usermodel.py"],
     "-o usermodel.py: a checkpoint's file name must end in .safetensors"),
    (["finetune", "usermodel:build", "--calib-data", "usermodel:calib", "--train-data", "usermodel:train",
      "--checkpoint-dir", ".", "-o", "finetune.safetensors"], "is the fine-tuning checkpoint that --checkpoint-dir keeps"),
    (["quantize", "usermodel:build", "--calib-data", "usermodel:calib", "-o", "q.safetensors", "--option",
      "calibrator=max"], "scheme 'int8' has no option calibrator; valid options: weight_bits"),
    (["quantize", "usermodel:build", "--calib-data", "usermodel:calib", "-o", "q.safetensors", "--percentile", "99"],
     "--percentile is for the percentile calibrator, and int8 calibrates with entropy by default"),
    (["quantize", "usermodel:build", "--calib-data", "usermodel:calib", "-o", "q.safetensors", "--skip", "*"],
     "no layer left to quantize: --skip matches all 2 quantizable layers"),
    (["quantize", "usermodel:build", "--calib-data", "usermodel:calib", "-o", "q.safetensors", "--calib-samples", "9"],
     "--calib-samples and --data-dir are for the default model"),
    (["eval", "--plot", "r.txt"], "--plot r.txt: the file name must end in .png, .svg, .pdf"),
    (["eval", "--json", "r.json", "--plot", "r.json"], "--plot r.json: the file name must end in"),
    (["eval", "usermodel:build", "--data", "usermodel:data", "--limit", "5", "--budget", "2"],
     "eval usermodel:build: --budget, --limit do not apply to a MODEL of yours (it takes --data, --schemes"),
    (["eval", "mnist-mlp", "--group-sizes", "64"], "--group-sizes does not apply to the bit-serial models"),
    (["eval", "--decode-tokens", "8"], "--decode-tokens does not apply to the default model"),
    (["eval", "smollm2", "--schemes", "int8"], "the language-model job runs fp8, w4a16, w4a8"),
    (["eval", "usermodel:build", "--data", "usermodel:data", "--train-data", "usermodel:train"], "give --qat-epochs"),
    (["eval", "usermodel:not_a_model", "--data", "usermodel:data"], "returned int, not a torch.nn.Module"),
])
def test_user_mistakes_give_one_line(user_module, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lowbit: error: ") and message in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_missing_dataset_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOWBIT_FASHION_MNIST_DIR", str(tmp_path))
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["eval", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "apt-get install dataset-fashion-mnist" in err and "Traceback" not in err


def test_quantize_bitserial_then_info(user_module, capsys):
    out = user_module / "b.safetensors"
    code = main(["quantize", "usermodel:build", "--calib-data", "usermodel:calib", "-o", str(out), "--scheme",
                 "bitserial", "--option", "weight_bits=6", "--no-progress"])
    assert code == 0 and "1 layer in bitserial" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3: linear 288->5  bitserial  act_bits=8 act_signed=" in text and "weight_bits=6 bitlayers_used=6" in text


def test_bitserial_eval_without_its_data_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path))  # no textgenrnn sdist there
    assert main(["eval", "textgenrnn", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "pip download --no-deps --no-binary :all: textgenrnn" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["eval", "mnist-mlp", "--weight-bits", "17"])
    assert "expected an integer from 1 to 16, got '17'" in capsys.readouterr().err


def test_decode_tokens_must_fit_a_window(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "smollm2", "--decode-tokens", "1025"])
    assert exit_info.value.code == 2
    assert "--decode-tokens: expected an integer from 2 to 1024, got '1025'" in capsys.readouterr().err


def test_bad_choice_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--calibrators", "max,kl"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_console_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "lowbit", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("lowbit ")


def test_info_names_a_damaged_layer_description(user_module, capsys):
    from lowbit.checkpoint import read_checkpoint, write_tensors

    out = user_module / "q.safetensors"
    assert main(["quantize", "usermodel:build", "--calib-data", "usermodel:calib", "-o", str(out), "--no-progress"]) == 0
    meta, tensors = read_checkpoint(out)
    del meta["layers"]["3"]["geometry"]
    header = {k: v for k, v in meta.items() if k not in ("sha256", "sha256_scope", "lowbit_version", "layers")}
    write_tensors(out, tensors, {**header, "layers": json.dumps(meta["layers"])})
    capsys.readouterr()
    assert main(["info", str(out)]) == 2
    err = capsys.readouterr().err
    assert "layer '3''s description in the header is damaged (KeyError: 'geometry')" in err and "Traceback" not in err
