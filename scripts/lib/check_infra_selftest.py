#!/usr/bin/env python3
"""Prove that scripts/lib/check_infra.py catches what it claims to.

Copies the deployment files (infra/, docker-compose.yml, Dockerfile) into a scratch
directory, checks that the unchanged copy passes, then breaks one thing per case (an
undeclared variable, an unknown module output or input, a variable the binary does not
accept, a wrong role, ...) and asserts that the checker exits 1 and names the broken thing.

Usage (through scripts/check-infra, which provides the venv):
    scripts/check-infra --self-test [CAS_BIN]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHECKER = Path(__file__).resolve().parent / "check_infra.py"
MODULE = "infra/modules/cas-cluster"
COMMUNITY = "infra/envs/community"
PARTNER = "infra/envs/partner"


class MutationError(Exception):
    """A case could not apply its change (the files it edits have changed shape)."""


def append(path: str, text: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        target = root / path
        target.write_text(target.read_text(encoding="utf-8") + text, encoding="utf-8")

    return mutate


def insert_after(path: str, pattern: str, text: str) -> Callable[[Path], None]:
    """Insert text after the first match of the (multi-line) regex pattern."""

    def mutate(root: Path) -> None:
        target = root / path
        content = target.read_text(encoding="utf-8")
        match = re.search(pattern, content, re.S)
        if not match:
            raise MutationError(f"{path}: no match for {pattern!r}")
        target.write_text(content[: match.end()] + text + content[match.end() :], encoding="utf-8")

    return mutate


def delete_line(path: str, pattern: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        target = root / path
        lines = target.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if not re.search(pattern, line)]
        if len(kept) == len(lines):
            raise MutationError(f"{path}: no line matches {pattern!r}")
        target.write_text("".join(kept), encoding="utf-8")

    return mutate


def compose(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """Edit docker-compose.yml as data (anchors and merges are expanded on the way)."""

    def mutate(root: Path) -> None:
        target = root / "docker-compose.yml"
        doc = yaml.safe_load(target.read_text(encoding="utf-8"))
        change(doc)
        target.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")

    return mutate


def dashboard(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        target = root / "infra/grafana/cas-dashboard.json"
        doc = json.loads(target.read_text(encoding="utf-8"))
        change(doc)
        target.write_text(json.dumps(doc, indent=2), encoding="utf-8")

    return mutate


def first_query_panel(doc: dict) -> dict:
    for panel in doc["panels"]:
        if panel.get("targets"):
            return panel
    raise MutationError("dashboard has no panel with a query")


def set_first_expr(doc: dict, expr: str) -> None:
    first_query_panel(doc)["targets"][0]["expr"] = expr


def drop_panels_with(doc: dict, metric: str) -> None:
    before = len(doc["panels"])
    doc["panels"] = [
        p for p in doc["panels"] if not any(metric in t.get("expr", "") for t in p.get("targets", []))
    ]
    if len(doc["panels"]) == before:
        raise MutationError(f"no panel queries {metric}")


def set_env(service: str, name: str, value: str) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        doc["services"][service].setdefault("environment", {})[name] = value

    return change


# (name, mutation, text the checker's output must contain, runs `terraform fmt` after)
CASES: list[tuple[str, Callable[[Path], None], str, bool]] = [
    (
        "module references an undeclared variable",
        append(f"{MODULE}/main.tf", '\nlocals {\n  selftest_local = var.selftest_not_declared\n}\n'),
        "var.selftest_not_declared is not declared",
        True,
    ),
    (
        "environment references an undeclared variable",
        append(f"{COMMUNITY}/outputs.tf", '\noutput "selftest" {\n  value = var.selftest_env_only\n}\n'),
        "var.selftest_env_only is not declared",
        True,
    ),
    (
        "module references an undeclared local",
        append(f"{MODULE}/outputs.tf", '\noutput "selftest" {\n  value = local.selftest_no_such_local\n}\n'),
        "local.selftest_no_such_local is not declared",
        True,
    ),
    (
        "environment reads an output the module does not declare",
        append(f"{PARTNER}/outputs.tf", '\noutput "selftest" {\n  value = module.cas.selftest_no_such_output\n}\n'),
        "declares no output 'selftest_no_such_output'",
        True,
    ),
    (
        "environment sets an input the module does not declare",
        insert_after(f"{PARTNER}/main.tf", r'module "cas" \{\n[^\n]*source[^\n]*\n', "  selftest_no_such_input = 1\n"),
        "sets 'selftest_no_such_input', which",
        True,
    ),
    (
        "environment leaves out a required module input",
        delete_line(f"{COMMUNITY}/main.tf", r"^\s*eth_chain_id\s*="),
        "does not set 'eth_chain_id'",
        True,
    ),
    (
        "example tfvars sets an undeclared variable",
        append(f"{COMMUNITY}/terraform.tfvars.example", 'selftest_tfvar = "x"\n'),
        "'selftest_tfvar' is not a variable",
        False,
    ),
    (
        "task definition passes a variable no role accepts",
        insert_after(f"{MODULE}/main.tf", r"role_environment = \{.*?\n    api = \{\n", '      CAS_SELFTEST_ADDR = "0.0.0.0:9464"\n'),
        "CAS_SELFTEST_ADDR is not accepted by `cas api` (no role",
        True,
    ),
    (
        "task definition gives the wallet key to the api",
        insert_after(
            f"{MODULE}/main.tf",
            r"role_secrets = \{.*?\n    api = \{\n",
            "      CAS_ETH_PRIVATE_KEY = aws_secretsmanager_secret.eth_private_key.arn\n",
        ),
        "CAS_ETH_PRIVATE_KEY is not accepted by `cas api` (only by: ",
        True,
    ),
    (
        "environment passes an unknown variable through extra_environment",
        insert_after(
            f"{COMMUNITY}/main.tf",
            r'module "cas" \{\n[^\n]*source[^\n]*\n',
            '  extra_environment = { scheduler = { CAS_SELFTEST_TUNING = "1" } }\n',
        ),
        "CAS_SELFTEST_TUNING is not accepted by `cas scheduler`",
        True,
    ),
    (
        "a CAS_* name written inline in a container definition",
        append(
            f"{MODULE}/ecs.tf",
            '\nresource "terraform_data" "selftest" {\n'
            '  input = jsonencode([{ name = "CAS_SELFTEST_INLINE", value = "1" }])\n}\n',
        ),
        "CAS_SELFTEST_INLINE is not a variable of any role",
        True,
    ),
    (
        "compose passes a variable no role accepts",
        compose(set_env("api", "CAS_SELFTEST_ADDR", "0.0.0.0:9464")),
        "CAS_SELFTEST_ADDR is not accepted by `cas api` (no role",
        False,
    ),
    (
        "compose passes a worker-only variable to the scheduler",
        compose(set_env("scheduler", "CAS_INSTALL_DEV_CONTRACT", "true")),
        "CAS_INSTALL_DEV_CONTRACT is not accepted by `cas scheduler` (only by: ",
        False,
    ),
    (
        "compose passes a pipeline variable to migrate",
        compose(set_env("migrate", "CAS_S3_BUCKET", "cas-local")),
        "CAS_S3_BUCKET is not accepted by `cas migrate`",
        False,
    ),
    (
        "compose runs a role the binary does not have",
        compose(lambda doc: doc["services"]["scheduler"].__setitem__("command", ["schedule"])),
        "command 'schedule' is not a role",
        False,
    ),
    (
        "compose depends on a service that does not exist",
        compose(
            lambda doc: doc["services"]["worker"]["depends_on"].__setitem__(
                "selftest-missing", {"condition": "service_started"}
            )
        ),
        "depends_on 'selftest-missing', which is not a service",
        False,
    ),
    (
        "compose waits for a service without a healthcheck to be healthy",
        compose(lambda doc: doc["services"]["postgres"].pop("healthcheck")),
        "but postgres has no healthcheck",
        False,
    ),
    (
        "dashboard queries a metric the service does not export",
        dashboard(lambda doc: set_first_expr(doc, "sum(rate(cas_selftest_unknown_total[5m]))")),
        "queries cas_selftest_unknown_total",
        False,
    ),
    (
        "dashboard lacks a panel for an agreed metric",
        dashboard(lambda doc: drop_panels_with(doc, "cas_fee_bumps_total")),
        "no panel shows cas_fee_bumps_total",
        False,
    ),
]

FMT_CASE = (
    "a Terraform file is not formatted",
    append(f"{MODULE}/main.tf", "\nlocals {\nselftest_unformatted=1\n}\n"),
    "terraform fmt -check -recursive infra` fails",
    False,
)


def make_copy(scratch: Path) -> Path:
    root = scratch / "repo"
    root.mkdir(parents=True)
    shutil.copytree(ROOT / "infra", root / "infra", ignore=shutil.ignore_patterns(".terraform", "*.tfstate*"))
    shutil.copy2(ROOT / "docker-compose.yml", root / "docker-compose.yml")
    shutil.copy2(ROOT / "Dockerfile", root / "Dockerfile")
    return root


def run_checker(root: Path, cas_bin: str, extra: list[str]) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, str(CHECKER), "--root", str(root), *extra, cas_bin],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def main(argv: list[str]) -> int:
    cas_bin = argv[0] if argv else os.environ.get("CAS_BIN")
    if not cas_bin:
        print("check-infra self-test: give the path of the cas binary (argument or CAS_BIN)", file=sys.stderr)
        return 2
    terraform = shutil.which("terraform")
    extra = [] if terraform else ["--allow-missing-terraform"]
    cases = list(CASES) + ([FMT_CASE] if terraform else [])
    failures = 0

    with tempfile.TemporaryDirectory(prefix="cas-check-infra.") as scratch:
        status, output = run_checker(make_copy(Path(scratch) / "pristine"), cas_bin, extra)
        if status != 0:
            print("FAIL: the unchanged copy does not pass the checks:\n" + output)
            return 1
        print("ok: the unchanged copy passes")

        for index, (name, mutate, expected, fmt_after) in enumerate(cases):
            root = make_copy(Path(scratch) / f"case-{index}")
            try:
                mutate(root)
            except MutationError as err:
                print(f"FAIL: {name}: the broken copy could not be made: {err}")
                failures += 1
                continue
            if fmt_after and terraform:
                # Keep formatting out of it: the case must fail for its own reason.
                subprocess.run([terraform, "fmt", "-recursive", str(root / "infra")], capture_output=True, check=False)
            status, output = run_checker(root, cas_bin, extra)
            if status != 1:
                print(f"FAIL: {name}: the checker exited {status}, not 1:\n{output}")
                failures += 1
            elif expected not in output:
                print(f"FAIL: {name}: the checker failed, but without saying {expected!r}:\n{output}")
                failures += 1
            else:
                print(f"ok: rejects: {name}")
        if not terraform:
            print("skipped: the terraform fmt case (terraform is not on PATH)")

    if failures:
        print(f"check-infra self-test: {failures} of {len(cases)} broken copies were not caught as expected")
        return 1
    print(f"check-infra self-test: all {len(cases)} broken copies rejected, the unchanged copy accepted")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
