"""Static checks of docker/: the Dockerfile, .dockerignore, the Apptainer definition and
the Slurm examples. The real build and run is docker/ci-check.sh (`make container-check`)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import typer.main

from medmamba.cli import app

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
SBATCH = sorted((DOCKER / "slurm").glob("*.sbatch"))
TRAIN_SCRIPTS = [path for path in SBATCH if path.name.startswith("train_")]


def logical_lines(text: str) -> list[str]:
    """Shell lines with backslash continuations joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def dockerfile_instructions() -> list[tuple[str, str]]:
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in logical_lines((DOCKER / "Dockerfile").read_text())]


def def_sections() -> dict[str, str]:
    """Apptainer definition: header under "header", each %section's body under its name."""
    sections: dict[str, list[str]] = {"header": []}
    current = "header"
    for line in (DOCKER / "apptainer.def").read_text().splitlines():
        if line.startswith("%"):
            current = line.split()[0]
            sections[current] = []
        else:
            sections[current].append(line)
    return {name: "\n".join(body) for name, body in sections.items()}


def test_dockerfile_runs_medmamba_as_non_root_from_a_slim_base() -> None:
    instructions = dockerfile_instructions()
    arg_lines = [value for kind, value in instructions if kind == "ARG"]
    assert "PYTHON_IMAGE=python:3.11-slim" in arg_lines
    users = [value for kind, value in instructions if kind == "USER"]
    assert users, "the image must switch to a non-root user"
    assert users[-1].split(":")[0] not in {"0", "root"}
    entrypoints = [value for kind, value in instructions if kind == "ENTRYPOINT"]
    assert entrypoints == ['["medmamba"]'], "ENTRYPOINT in exec form"


def test_dockerfile_labels_match_the_package() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert f"ARG VERSION={project['version']}" in text, "the version label's default drifted from pyproject.toml"
    for label in ("version", "source", "licenses", "revision"):
        assert f"org.opencontainers.image.{label}=" in text
    assert f'org.opencontainers.image.licenses="{project["license"]["text"]}"' in text


def test_dockerfile_documents_torch_variants_mounts_and_shared_memory() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert "ARG TORCH_VARIANT=cuda" in text
    assert "download.pytorch.org/whl/cpu" in text
    assert "--build-context wheels=" in text
    for mount in ("/data:ro", "/work", "/output"):
        assert mount in text
    assert "--shm-size" in text and "--ipc" in text and "--workers 0" in text


def test_dockerfile_holds_no_secrets() -> None:
    for kind, value in dockerfile_instructions():
        if kind in {"ARG", "ENV"}:
            assert not re.search(r"TOKEN|PASSWORD|SECRET|API_KEY", value, re.IGNORECASE), value


def test_dockerignore_admits_only_what_the_install_reads() -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "start from nothing, so .git, .venv, wheels and work folders stay out"
    admitted = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", pyproject["project"]["readme"]}
    needed |= set(pyproject["tool"]["setuptools"]["package-dir"].values())
    assert needed <= admitted, f"add to .dockerignore: {sorted(needed - admitted)}"
    copied = {value.split()[0] for kind, value in dockerfile_instructions() if kind == "COPY"
              and not value.startswith("--")}
    assert copied <= admitted | {"pyproject.toml"}, "the Dockerfile copies a path .dockerignore leaves out"


def test_apptainer_definition_has_its_sections() -> None:
    sections = def_sections()
    header = dict(line.split(":", 1) for line in sections["header"].splitlines()
                  if line.strip() and not line.startswith("#"))
    assert header["Bootstrap"].strip() in {"docker-archive", "docker-daemon", "docker"}
    assert header["From"].strip()
    for name in ("%labels", "%runscript", "%test", "%help"):
        assert sections.get(name, "").strip(), f"apptainer.def needs a {name} section"
    assert 'medmamba "$@"' in sections["%runscript"]
    assert "medmamba" in sections["%test"]
    for bind in ("/data:ro", "/work", "/output", "--nv"):
        assert bind in sections["%help"], f"%help should document {bind}"


@pytest.mark.parametrize("section", ["%runscript", "%test"])
def test_apptainer_scripts_parse(section: str) -> None:
    subprocess.run(["bash", "-n"], input=def_sections()[section], text=True, check=True)


@pytest.mark.parametrize("path", [*SBATCH, DOCKER / "ci-check.sh"], ids=lambda path: path.name)
def test_shell_scripts_parse(path: Path) -> None:
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_slurm_examples_cover_the_cluster_jobs() -> None:
    names = {path.name for path in SBATCH}
    assert {"train_1gpu.sbatch", "train_1node_multigpu.sbatch", "train_multinode.sbatch",
            "predict_array.sbatch"} <= names
    multinode = (DOCKER / "slurm" / "train_multinode.sbatch").read_text()
    assert "scontrol show hostnames" in multinode and "--rdzv-endpoint" in multinode
    assert "--standalone" in (DOCKER / "slurm" / "train_1node_multigpu.sbatch").read_text()
    array = (DOCKER / "slurm" / "predict_array.sbatch").read_text()
    assert "SLURM_ARRAY_TASK_COUNT" in array and "SLURM_ARRAY_TASK_ID" in array


@pytest.mark.parametrize("path", SBATCH, ids=lambda path: path.name)
def test_slurm_example_runs_with_and_without_the_container(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert re.search(r"^#SBATCH --time=", text, re.MULTILINE)
    assert "apptainer exec --nv" in text, "the container way"
    assert '"$VENV/bin/activate"' in text, "the virtual environment way"


@pytest.mark.parametrize("path", TRAIN_SCRIPTS, ids=lambda path: path.name)
def test_training_examples_requeue_and_resume(path: Path) -> None:
    text = path.read_text()
    assert re.search(r"^#SBATCH --signal=B:USR1@\d+$", text, re.MULTILINE)
    assert re.search(r"^#SBATCH --requeue$", text, re.MULTILINE)
    assert "trap on_time_limit USR1" in text and "scontrol requeue" in text
    assert 'kill -TERM "$pid"' in text, "stop training before the requeue: it need not end every process"
    assert "--resume" in text and "checkpoint_latest.pt" in text
    assert '&\npid=$!\nwait "$pid"' in text, "the trap only runs while bash waits in the background"


def medmamba_invocations(path: Path) -> list[tuple[str, set[str]]]:
    """(subcommand, option names) of every `medmamba CMD ...` in a script."""
    found = []
    for line in logical_lines(path.read_text()):
        words = shlex.split(line, posix=True)
        for index, word in enumerate(words[:-1]):
            if word == "medmamba" and words[index + 1] in {"train", "predict"}:
                options = {token.split("=")[0] for token in words[index + 2:]
                           if token.startswith("-") and token not in {"-", "--"} and token != "&"}
                found.append((words[index + 1], options))
    return found


@pytest.mark.parametrize("path", SBATCH, ids=lambda path: path.name)
def test_slurm_examples_use_existing_cli_options(path: Path) -> None:
    commands = typer.main.get_command(app).commands
    invocations = medmamba_invocations(path)
    assert invocations, f"{path.name} runs no medmamba command"
    for name, options in invocations:
        command = commands.get(name)
        if command is None:
            pytest.skip(f"`medmamba {name}` does not exist yet")
        known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        assert options <= known, f"{path.name}: medmamba {name} has no option {sorted(options - known)}"
