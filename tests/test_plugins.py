"""Out-of-tree plugins (core/plugins.py): the example adapter (examples/radial_plugin.py, a modality and an
objective) runs from the CLI through a config's `plugins`, and its saved run samples from another directory; a
dotted module name and an installed package's `potstill.plugins` entry point register components too; a plugin
that fails names itself and the cause; importing a plugin twice registers it once."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from potstill.core.config import ConfigError, load_config
from potstill.core.plugins import import_plugins
from potstill.core.registry import MODALITIES, OBJECTIVES
from tests_support import ROOT

POTSTILL = [sys.executable, "-m", "potstill.cli"]


def run(args: list[str], cwd, env_path=None) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    if env_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(env_path), env.get("PYTHONPATH", "")])
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_the_example_plugin_runs_from_the_cli_and_its_run_samples_elsewhere(tmp_path):
    work = tmp_path / "work"
    shutil.copytree(ROOT / "examples", work / "examples")
    shutil.copytree(ROOT / "configs" / "vector", work / "configs" / "vector")
    run([*POTSTILL, "distill", "examples/radial.yaml", "--out", "run", "--set", "train.steps=20",
         "train.progress=false", "eval.n_samples=500"], cwd=work)
    report = (work / "run" / "report.json").read_text()
    assert "radius_gap" in report
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run([*POTSTILL, "sample", str(work / "run"), "--n", "16", "--out", "s.pt"], cwd=elsewhere)
    assert torch.load(elsewhere / "s.pt").shape == (16, 2)


def test_a_dotted_module_and_an_entry_point_register_components(tmp_path):
    package = tmp_path / "site" / "my_adapters"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "extra.py").write_text(textwrap.dedent("""
        from potstill.core.registry import OBJECTIVES
        from potstill.core.objectives.adversarial import AdversarialOnly
        OBJECTIVES.register("my_ladd")(lambda options, context: AdversarialOnly("ladd"))
    """))
    (package / "installed.py").write_text(textwrap.dedent("""
        from potstill.core.registry import OBJECTIVES
        from potstill.core.objectives.adversarial import AdversarialOnly
        OBJECTIVES.register("my_apt")(lambda options, context: AdversarialOnly("apt"))
    """))
    info = tmp_path / "site" / "my_adapters-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-adapters\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[potstill.plugins]\nmine = my_adapters.installed\n")
    script = textwrap.dedent(f"""
        from potstill.core.config import load_config
        config = load_config({str(ROOT / 'configs' / 'vector' / 'gmm_ladd.yaml')!r},
                             ["plugins=[my_adapters.extra]", "objective=my_ladd"])
        from potstill.core.registry import OBJECTIVES
        print(config.objective.kind, OBJECTIVES.get("my_apt", "objective.kind").builder is not None)
    """)
    result = run([sys.executable, "-c", script], cwd=tmp_path, env_path=tmp_path / "site")
    assert result.stdout.split() == ["my_ladd", "True"]


def test_a_failing_plugin_names_itself_and_the_cause(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    with pytest.raises(ConfigError, match=r"plugins: cannot import .*broken\.py.*ModuleNotFoundError"):
        import_plugins([str(broken)])
    with pytest.raises(ConfigError, match=r"plugins: cannot import .*missing\.py.*does not exist"):
        load_config(ROOT / "configs" / "vector" / "gmm_dmd2.yaml", [f"plugins=[{tmp_path / 'missing.py'}]"])
    with pytest.raises(ConfigError, match=r"plugins: expected a list"):
        load_config(ROOT / "configs" / "vector" / "gmm_dmd2.yaml", ["plugins=7"])


def test_a_plugin_imported_twice_registers_once():
    plugin = str(ROOT / "examples" / "radial_plugin.py")
    import_plugins([plugin])
    import_plugins([plugin])
    assert MODALITIES.get("radial", "modality.kind") is not None
    assert OBJECTIVES.get("score_gap", "objective.kind") is not None
