"""The package's import graph follows its layers and has no import circle (tools/check_layers.py,
which anyone can run: `python tools/check_layers.py`)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_import_circle_and_no_import_against_the_layers():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "check_layers.py")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 problem(s)" in done.stdout


def test_the_checker_finds_a_circle_and_a_layer_break(tmp_path):
    package = tmp_path / "bedrock_local"
    for folder in ("engine", "service"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "engine" / "a.py").write_text("from bedrock_local.engine import b\n")
    (package / "engine" / "b.py").write_text("def f():\n    from bedrock_local.engine import a\n")
    (package / "engine" / "c.py").write_text("from bedrock_local.service import d\n")
    (package / "service" / "d.py").write_text("")
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "check_layers.py"), str(package)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "import circle: bedrock_local.engine.a <-> bedrock_local.engine.b" in done.stdout
    assert "bedrock_local.engine.c imports bedrock_local.service.d" in done.stdout
