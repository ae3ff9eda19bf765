"""The wheel must carry the prompt banks, and the package must find them in editable and wheel installs."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_prompt_banks(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = next(tmp_path.glob("zsad-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for bank in ("states.yaml", "templates.yaml", "defects.yaml", "dialogue.yaml"):
        assert f"zsad/_data/prompts/{bank}" in names
    # the demo app (the package zsad.demo) and its samples (zsad demo runs from a wheel) and the adapter recipes too
    assert "zsad/demo/app.py" in names and "zsad/demo/page.py" in names
    assert any(n.startswith("zsad/_data/demo/samples/") for n in names)
    assert "zsad/_data/adapters/README.md" in names
    assert any(n.startswith("zsad/_data/adapters/recipes/") for n in names)
    # installed from the wheel (unpacked elsewhere), the package finds its own copy, not the repository's
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    probe = ("import zsad.prompts as p, zsad.resources as r, zsad.demo.uploads as u; print(p.prompts_dir()); "
             "print(r.data_dir('demo', u.SAMPLES_MARKER))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(target), "PATH": ""}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    prompts, demo = out.stdout.split()
    assert Path(prompts) == target / "zsad" / "_data" / "prompts"
    assert Path(demo) == target / "zsad" / "_data" / "demo"


def test_import_is_light():
    """``import zsad`` must not pull in torch or open_clip (they load on first use)."""
    probe = "import sys, zsad; print('torch' in sys.modules, 'open_clip' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"]
