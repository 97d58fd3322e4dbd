"""docker/: both images install through the script CI runs, and the compose file's commands are valid
``rbr-rlhf`` invocations for the real CLI parser and recipe schema. (No Docker engine runs here.)"""

import re

import yaml

from cli_check import check
from conftest import REPO


def test_dockerfiles_use_the_ci_install_script():
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/install.sh cpu" in ci
    for flavor in ("cpu", "gpu"):
        text = (REPO / "docker" / f"Dockerfile.{flavor}").read_text()
        runs = re.findall(r"^RUN (.*)$", text, flags=re.M)
        assert f"bash scripts/install.sh {flavor}" in runs, runs
        assert re.search(r"^COPY \. \.$", text, flags=re.M)
        # thin: no pip in the Dockerfile itself, every package step is in the script
        assert "pip" not in " ".join(runs)
        assert 'ENTRYPOINT ["rbr-rlhf"]' in text
    assert "nvidia/cuda" in (REPO / "docker" / "Dockerfile.gpu").read_text()
    assert f"{'gpu'}" in (REPO / "scripts" / "install.sh").read_text()


def test_compose_runs_rollout_grader_and_trainer():
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"rollout", "grader", "trainer"} <= set(services)
    commands = {name: s["command"] for name, s in services.items()}
    assert commands["rollout"][:2] == ["rollout", "serve"] and commands["grader"][:2] == ["grader", "serve"]
    assert commands["trainer"][0] == "train"
    trainer = " ".join(commands["trainer"])
    assert "rollout.url=http://rollout:8800" in trainer and "rbr.service_url=http://grader:8700" in trainer
    for name, cmd in commands.items():
        assert services[name]["image"].startswith("${RBR_IMAGE")
        check("rbr-rlhf " + " ".join(cmd))  # the entrypoint is rbr-rlhf
    ports = {"rollout": "8800", "grader": "8700"}
    for name, port in ports.items():
        assert port in commands[name] and "0.0.0.0" in commands[name]
