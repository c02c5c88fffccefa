import json
import subprocess
import sys


def _stride(*args, ws=None):
    cmd = [sys.executable, "-m", "stride_core.cli", *args]
    if ws is not None:
        cmd += ["--workspace", str(ws)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_help_lists_subcommands():
    out = _stride("--help")
    assert out.returncode == 0
    for name in ("corpus", "model", "demo"):
        assert name in out.stdout


def test_import_list_show_and_errors(tmp_path):
    ws = tmp_path / "ws"
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": f"text {i}", "source": "s"}) + "\n" for i in range(3)))
    ok = _stride("corpus", "import", str(src), "--name", "c", ws=ws)
    assert ok.returncode == 0, ok.stderr
    assert "3 documents" in ok.stdout
    assert "c" in _stride("corpus", "list", ws=ws).stdout
    assert "text 1" in _stride("corpus", "show", "c", "--limit", "2", ws=ws).stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "x"}\n{oops\n')
    res = _stride("corpus", "import", str(bad), "--name", "bad", ws=ws)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error:") and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = _stride("model", "check", str(tmp_path), ws=ws)
    assert res.returncode == 2 and "Traceback" not in res.stderr
