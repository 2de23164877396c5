#!/usr/bin/env python3
"""Static checks of the deployment files (infra/, docker-compose.yml) against the real
`cas` binary. Run through scripts/check-infra, which provides python-hcl2 and PyYAML.

What is checked (each failure is printed with the file it is in):

  fmt        `terraform fmt -check -recursive infra` passes.
  terraform  in every directory with .tf files: each `var.X` is a declared variable, each
             `local.X` a declared local; each `module.M.Y` names a module block M whose
             source declares output Y; each input set in a module block is a variable of
             the module, and every module variable without a default is set; each key of
             a *.tfvars / *.tfvars.example file is a declared variable.
  env        the environment the ECS task definitions pass (the `role_environment` and
             `role_secrets` locals, keyed by role, and `extra_environment` module inputs)
             holds only variables that `cas <role> --help` lists for that role (plus AWS_*
             and RUST_LOG); and any CAS_* name written anywhere in the Terraform is one
             that some role accepts.
  compose    docker-compose.yml parses; depends_on targets exist (and have a healthcheck
             where service_healthy is asked for); each service built from the Dockerfile
             runs a real role as its command, with only the variables that role accepts.
  dashboard  infra/grafana/cas-dashboard.json is JSON, queries only the agreed metric names,
             and has a panel for each of them.

The roles and the variables each accepts come from the binary itself: `cas --help` lists
the roles, `cas <role> --help` prints `[env: NAME...]` for every flag.

Exit status: 0 all checks pass, 1 problems found, 2 the checks could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import hcl2
import yaml
from hcl2 import SerializationOptions

# Variables whose name says they are the binary's: these must be accepted by the role.
CHECKED_ENV = re.compile(r"^(CAS_[A-Z0-9_]+|DATABASE_URL|ETH_RPC_URL)$")
# Variables read by libraries the binary uses (the AWS SDK, tracing), always allowed.
LIBRARY_ENV = re.compile(r"^(AWS_[A-Z0-9_]+|RUST_LOG|RUST_BACKTRACE)$")
CAS_TOKEN = re.compile(r"\bCAS_[A-Z0-9_]+\b")

# The metric names of the Prometheus endpoint (the agreed naming scheme). Histograms are
# queried through their _bucket, _sum and _count series.
METRICS = {
    "cas_http_requests_total",
    "cas_http_request_duration_seconds",
    "cas_requests_created_total",
    "cas_batches_closed_total",
    "cas_batch_size",
    "cas_tree_build_seconds",
    "cas_anchor_attempts_total",
    "cas_fee_bumps_total",
    "cas_queue_depth",
    "cas_oldest_pending_seconds",
    "cas_witness_cache_hits_total",
    "cas_witness_cache_misses_total",
    "cas_wallet_balance_wei",
}
HISTOGRAMS = {"cas_http_request_duration_seconds", "cas_batch_size", "cas_tree_build_seconds"}
METRIC_TOKEN = re.compile(r"\bcas_[a-z0-9_]+\b")

MODULE_META_ARGS = {"source", "version", "providers", "count", "for_each", "depends_on"}
COMPOSE_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}

IDENT = r"[A-Za-z_][A-Za-z0-9_-]*"
VAR_REF = re.compile(rf"(?<![\w.])var\.({IDENT})")
LOCAL_REF = re.compile(rf"(?<![\w.])local\.({IDENT})")
MODULE_REF = re.compile(rf"(?<![\w.])module\.({IDENT})(?:\[[^\]]*\])?\.({IDENT})")

HCL_OPTIONS = SerializationOptions(
    with_comments=False,
    explicit_blocks=False,
    strip_string_quotes=True,
)


class SetupError(Exception):
    """The checks cannot run (missing binary, unreadable help output, ...)."""


@dataclass
class Report:
    problems: list[tuple[str, str]] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)

    def fail(self, check: str, message: str) -> None:
        self.problems.append((check, message))

    def count(self, check: str) -> int:
        return sum(1 for c, _ in self.problems if c == check)


# ---------------------------------------------------------------------------------------
# The binary
# ---------------------------------------------------------------------------------------


def _run_help(cas_bin: Path, args: list[str]) -> str:
    # A clean environment: clap prints the current value of each variable in the help, and
    # none should leak (or change what is parsed).
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C", "COLUMNS": "200"}
    try:
        result = subprocess.run(
            [str(cas_bin), *args, "--help"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except OSError as err:
        raise SetupError(f"cannot run {cas_bin}: {err}") from err
    if result.returncode != 0:
        raise SetupError(
            f"`{cas_bin} {' '.join(args + ['--help'])}` exited {result.returncode}: "
            f"{result.stderr.strip()[:500]}"
        )
    return result.stdout


def accepted_environment(cas_bin: Path) -> dict[str, set[str]]:
    """Role -> the environment variables `cas <role> --help` lists."""
    top = _run_help(cas_bin, [])
    roles: list[str] = []
    in_commands = False
    for line in top.splitlines():
        if line.strip() == "Commands:":
            in_commands = True
            continue
        if in_commands:
            match = re.match(r"^\s{2}([a-z][a-z0-9-]*)\s", line + " ")
            if not match:
                break
            if match.group(1) != "help":
                roles.append(match.group(1))
    if not roles:
        raise SetupError(f"found no roles in the 'Commands:' section of `{cas_bin} --help`")
    accepted = {}
    for role in roles:
        text = " ".join(_run_help(cas_bin, [role]).split())
        names = set(re.findall(r"\[env:\s*([A-Z][A-Z0-9_]*)", text))
        if not names:
            raise SetupError(f"`{cas_bin} {role} --help` lists no [env: ...] variables")
        accepted[role] = names
    return accepted


def describe_env_problem(name: str, role: str, accepted: dict[str, set[str]]) -> str:
    others = sorted(r for r, names in accepted.items() if name in names)
    if others:
        return f"{name} is not accepted by `cas {role}` (only by: {', '.join(others)})"
    return f"{name} is not accepted by `cas {role}` (no role of the binary knows it)"


def check_env_names(
    report: Report,
    check: str,
    where: str,
    role: str,
    names: list[str],
    accepted: dict[str, set[str]],
) -> None:
    if role not in accepted:
        report.fail(check, f"{where}: {role!r} is not a role of the binary ({', '.join(sorted(accepted))})")
        return
    for name in names:
        if CHECKED_ENV.match(name):
            if name not in accepted[role]:
                report.fail(check, f"{where}: {describe_env_problem(name, role, accepted)}")
        elif not LIBRARY_ENV.match(name):
            report.fail(
                check,
                f"{where}: {name} is neither a variable of `cas {role}` nor an AWS_*/RUST_LOG one",
            )


# ---------------------------------------------------------------------------------------
# terraform fmt
# ---------------------------------------------------------------------------------------


def check_fmt(report: Report, root: Path, allow_missing: bool) -> None:
    infra = root / "infra"
    terraform = shutil.which("terraform")
    if terraform is None:
        if allow_missing:
            print("check-infra: SKIPPED terraform fmt: terraform is not on PATH", file=sys.stderr)
            return
        report.fail(
            "fmt",
            "terraform is not on PATH, so `terraform fmt -check` cannot run "
            "(install it, or pass --allow-missing-terraform to skip only this check)",
        )
        return
    result = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-list=true", str(infra)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        files = [line for line in result.stdout.splitlines() if line.strip()]
        detail = ", ".join(files) if files else result.stderr.strip()[:500]
        report.fail("fmt", f"`terraform fmt -check -recursive infra` fails: {detail} (run `terraform fmt -recursive infra`)")
    else:
        report.passed.append("terraform fmt")


# ---------------------------------------------------------------------------------------
# Terraform
# ---------------------------------------------------------------------------------------


def load_hcl(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        return hcl2.load(handle, serialization_options=HCL_OPTIONS)


def walk_strings(node: Any) -> Iterator[str]:
    """Every string in a parsed HCL tree, object keys included."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str):
                yield key
            yield from walk_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_strings(item)


def interpolations(text: str) -> Iterator[str]:
    """The expressions of a parsed HCL value: the insides of its `${ ... }` spans."""
    start = text.find("${")
    while start != -1:
        depth = 0
        i = start + 1
        in_string = False
        while i < len(text):
            char = text[i]
            if in_string:
                if char == "\\":
                    i += 1
                elif char == '"':
                    in_string = False
            elif char == '"':
                in_string = True
            elif char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        yield text[start + 2 : i]
        start = text.find("${", i + 1)


def blocks(parsed: dict[str, Any], kind: str) -> Iterator[tuple[str, Any]]:
    """(label, body) of each `kind "label" { ... }` block."""
    for entry in parsed.get(kind, []):
        if isinstance(entry, dict):
            for label, body in entry.items():
                yield label, body


def locate(files: list[Path], needle: str) -> str:
    """file:line of the first non-comment line holding needle, for messages."""
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for number, line in enumerate(lines, 1):
            stripped = line.strip()
            if stripped.startswith(("#", "//")):
                continue
            if needle in line:
                return f"{path}:{number}"
    return str(files[0].parent) if files else "?"


@dataclass
class TfDir:
    path: Path
    files: dict[Path, dict[str, Any]]
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: set[str] = field(default_factory=set)
    locals: set[str] = field(default_factory=set)
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)


def parse_tf_dir(report: Report, path: Path) -> TfDir | None:
    files = {}
    for tf in sorted(path.glob("*.tf")):
        try:
            files[tf] = load_hcl(tf)
        except Exception as err:  # the parser raises several kinds of errors
            report.fail("terraform", f"{tf}: cannot parse: {str(err).splitlines()[0][:300]}")
    if not files:
        return None
    tfdir = TfDir(path=path, files=files)
    for parsed in files.values():
        for name, body in blocks(parsed, "variable"):
            tfdir.variables[name] = body if isinstance(body, dict) else {}
        for name, _ in blocks(parsed, "output"):
            tfdir.outputs.add(name)
        for entry in parsed.get("locals", []):
            if isinstance(entry, dict):
                tfdir.locals.update(entry.keys())
        for name, body in blocks(parsed, "module"):
            tfdir.modules[name] = body if isinstance(body, dict) else {}
    return tfdir


def check_terraform(report: Report, root: Path, accepted: dict[str, set[str]]) -> None:
    infra = root / "infra"
    dirs = sorted({tf.parent for tf in infra.rglob("*.tf") if ".terraform" not in tf.parts})
    if not dirs:
        report.fail("terraform", f"no .tf files under {infra}")
        return
    parsed_dirs: dict[Path, TfDir] = {}
    for path in dirs:
        tfdir = parse_tf_dir(report, path)
        if tfdir is not None:
            parsed_dirs[path.resolve()] = tfdir

    known_cas_names = set().union(*accepted.values())
    before = len(report.problems)

    for tfdir in parsed_dirs.values():
        files = list(tfdir.files)
        # References to variables, locals and module outputs.
        for tf, parsed in tfdir.files.items():
            for text in walk_strings(parsed):
                for expression in interpolations(text):
                    for name in VAR_REF.findall(expression):
                        if name not in tfdir.variables:
                            report.fail(
                                "terraform",
                                f"{locate([tf], 'var.' + name)}: var.{name} is not declared as a variable in {tfdir.path}",
                            )
                    for name in LOCAL_REF.findall(expression):
                        if name not in tfdir.locals:
                            report.fail(
                                "terraform",
                                f"{locate([tf], 'local.' + name)}: local.{name} is not declared in {tfdir.path}",
                            )
                    for module, output in MODULE_REF.findall(expression):
                        if module not in tfdir.modules:
                            report.fail(
                                "terraform",
                                f"{locate([tf], 'module.' + module)}: module.{module} is not a module block in {tfdir.path}",
                            )
                            continue
                        target = module_dir(tfdir, module, parsed_dirs)
                        if target is not None and output not in target.outputs:
                            report.fail(
                                "terraform",
                                f"{locate([tf], f'module.{module}.{output}')}: module.{module}.{output}: "
                                f"{target.path} declares no output {output!r} (outputs.tf)",
                            )
            # Any CAS_* name anywhere must be one the binary knows.
            for text in walk_strings(parsed):
                for token in CAS_TOKEN.findall(text):
                    if token not in known_cas_names:
                        report.fail(
                            "env",
                            f"{locate([tf], token)}: {token} is not a variable of any role of the binary",
                        )
            # The task definitions' environment, per role.
            for entry in parsed.get("locals", []):
                if not isinstance(entry, dict):
                    continue
                for local_name in ("role_environment", "role_secrets"):
                    if local_name in entry:
                        check_role_env_map(
                            report, tf, f"local.{local_name}", entry[local_name], accepted
                        )

        # Module calls: inputs and required variables.
        for module, body in tfdir.modules.items():
            block_line = locate(files, 'module "' + module + '"')
            target = module_dir(tfdir, module, parsed_dirs)
            if target is None:
                source = body.get("source")
                if isinstance(source, str) and source.startswith((".", "/")):
                    report.fail(
                        "terraform",
                        f"{block_line}: module {module}: source {source!r} has no .tf files",
                    )
                continue
            for key, value in body.items():
                if key in MODULE_META_ARGS:
                    continue
                if key not in target.variables:
                    report.fail(
                        "terraform",
                        f"{locate(files, key + ' ')}: module {module} sets {key!r}, which {target.path} does not declare as a variable",
                    )
                if key == "extra_environment":
                    check_role_env_map(report, files[0], f"module {module} extra_environment", value, accepted)
            for name, spec in target.variables.items():
                if "default" not in spec and name not in body:
                    report.fail(
                        "terraform",
                        f"{block_line}: module {module} does not set {name!r}, which has no default in {target.path}",
                    )

        # Variable files.
        for varfile in sorted(list(tfdir.path.glob("*.tfvars")) + list(tfdir.path.glob("*.tfvars.example"))):
            try:
                values = load_hcl(varfile)
            except Exception as err:
                report.fail("terraform", f"{varfile}: cannot parse: {str(err).splitlines()[0][:300]}")
                continue
            for key in values:
                if key not in tfdir.variables:
                    report.fail("terraform", f"{locate([varfile], key)}: {key!r} is not a variable of {tfdir.path}")

    if len(report.problems) == before:
        report.passed.append(f"terraform references and module interfaces ({len(parsed_dirs)} directories)")
        report.passed.append("environment of the ECS task definitions")


def module_dir(tfdir: TfDir, module: str, parsed_dirs: dict[Path, TfDir]) -> TfDir | None:
    source = tfdir.modules.get(module, {}).get("source")
    if not isinstance(source, str) or not source.startswith((".", "/")):
        return None  # a registry module: its interface is not here
    return parsed_dirs.get((tfdir.path / source).resolve())


def check_role_env_map(
    report: Report, where_file: Path, what: str, value: Any, accepted: dict[str, set[str]]
) -> None:
    if not isinstance(value, dict):
        report.fail(
            "env",
            f"{where_file}: {what} must be a literal map of role => {{ NAME = value }} so it can be checked",
        )
        return
    for role, env in value.items():
        if not isinstance(env, dict):
            report.fail("env", f"{where_file}: {what}[{role}] must be a literal map of variables")
            continue
        check_env_names(report, "env", f"{where_file}: {what}[{role}]", role, list(env), accepted)


# ---------------------------------------------------------------------------------------
# docker-compose.yml
# ---------------------------------------------------------------------------------------


def compose_environment(service: dict[str, Any]) -> list[str]:
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return [str(k) for k in env]
    names = []
    for item in env:
        names.append(str(item).split("=", 1)[0])
    return names


def compose_command(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    if command is None:
        return []
    if isinstance(command, str):
        return command.split()
    return [str(part) for part in command]


def check_compose(report: Report, root: Path, accepted: dict[str, set[str]]) -> None:
    path = root / "docker-compose.yml"
    before = len(report.problems)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        report.fail("compose", f"{path}: cannot read: {err}")
        return
    services = (doc or {}).get("services")
    if not isinstance(services, dict) or not services:
        report.fail("compose", f"{path}: no services")
        return

    built_images = {
        s.get("image") for s in services.values() if isinstance(s, dict) and "build" in s and s.get("image")
    }
    role_services = 0
    for name, service in services.items():
        where = f"{path}: service {name}"
        if not isinstance(service, dict):
            report.fail("compose", f"{where}: not a mapping")
            continue

        depends = service.get("depends_on") or {}
        targets = depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends)
        for target, spec in targets:
            if target not in services:
                report.fail("compose", f"{where}: depends_on {target!r}, which is not a service")
                continue
            condition = (spec or {}).get("condition", "service_started")
            if condition not in COMPOSE_CONDITIONS:
                report.fail("compose", f"{where}: depends_on {target}: unknown condition {condition!r}")
            if condition == "service_healthy":
                health = services[target].get("healthcheck") if isinstance(services[target], dict) else None
                if not health or health.get("disable"):
                    report.fail("compose", f"{where}: waits for {target} to be healthy, but {target} has no healthcheck")

        is_cas = "build" in service or (service.get("image") in built_images and service.get("image"))
        if not is_cas:
            continue
        role_services += 1
        build = service.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            if not (root / context / dockerfile).is_file():
                report.fail("compose", f"{where}: build file {Path(context) / dockerfile} does not exist")
        if service.get("env_file"):
            report.fail("compose", f"{where}: env_file cannot be checked; set the variables under environment")
        command = compose_command(service)
        if not command:
            report.fail("compose", f"{where}: runs the cas image without a role as its command")
            continue
        role = command[0]
        if role not in accepted:
            report.fail(
                "compose",
                f"{where}: command {role!r} is not a role of the binary ({', '.join(sorted(accepted))})",
            )
            continue
        check_env_names(report, "compose", where, role, compose_environment(service), accepted)

    if role_services == 0:
        report.fail("compose", f"{path}: no service runs the cas image")
    if len(report.problems) == before:
        report.passed.append(f"docker-compose.yml ({len(services)} services, {role_services} running cas)")


# ---------------------------------------------------------------------------------------
# Grafana dashboard
# ---------------------------------------------------------------------------------------


def panel_queries(panels: list[Any]) -> Iterator[tuple[str, str]]:
    for panel in panels or []:
        if not isinstance(panel, dict):
            continue
        for target in panel.get("targets") or []:
            if isinstance(target, dict) and isinstance(target.get("expr"), str):
                yield panel.get("title", "?"), target["expr"]
        yield from panel_queries(panel.get("panels") or [])


def check_dashboard(report: Report, root: Path) -> None:
    path = root / "infra" / "grafana" / "cas-dashboard.json"
    before = len(report.problems)
    try:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        report.fail("dashboard", f"{path}: cannot read: {err}")
        return
    queries = list(panel_queries(dashboard.get("panels", [])))
    for variable in (dashboard.get("templating") or {}).get("list", []):
        query = variable.get("query") if isinstance(variable, dict) else None
        if isinstance(query, dict):
            query = query.get("query")
        if isinstance(query, str):
            queries.append((f"variable {variable.get('name', '?')}", query))
    used = set()
    for title, expr in queries:
        for token in METRIC_TOKEN.findall(expr):
            base = token
            for suffix in ("_bucket", "_sum", "_count"):
                if token.endswith(suffix) and token[: -len(suffix)] in HISTOGRAMS:
                    base = token[: -len(suffix)]
            if base not in METRICS:
                report.fail("dashboard", f"{path}: panel {title!r} queries {token}, which is not one of the service's metrics")
            else:
                used.add(base)
    for missing in sorted(METRICS - used):
        report.fail("dashboard", f"{path}: no panel shows {missing}")
    if len(report.problems) == before:
        report.passed.append(f"dashboard ({len(used)} metrics)")


# ---------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cas_bin", nargs="?", default=os.environ.get("CAS_BIN"), help="path of the cas binary (or env CAS_BIN)")
    parser.add_argument("--root", default=Path(__file__).resolve().parents[2], type=Path, help="repository root")
    parser.add_argument(
        "--allow-missing-terraform",
        action="store_true",
        help="skip the terraform fmt check (with a warning) when terraform is not installed",
    )
    args = parser.parse_args(argv)
    if not args.cas_bin:
        print("check-infra: give the path of the cas binary (argument or CAS_BIN); build it with `cargo build -p cas`", file=sys.stderr)
        return 2
    cas_bin = Path(args.cas_bin)
    if not (cas_bin.is_file() and os.access(cas_bin, os.X_OK)):
        print(f"check-infra: {cas_bin} is not an executable file; build it with `cargo build -p cas`", file=sys.stderr)
        return 2
    root = args.root.resolve()

    try:
        accepted = accepted_environment(cas_bin)
    except SetupError as err:
        print(f"check-infra: {err}", file=sys.stderr)
        return 2

    report = Report()
    check_fmt(report, root, args.allow_missing_terraform)
    check_terraform(report, root, accepted)
    check_compose(report, root, accepted)
    check_dashboard(report, root)

    roles = ", ".join(f"{role} ({len(names)} variables)" for role, names in sorted(accepted.items()))
    if report.problems:
        print(f"check-infra: FAILED with {len(report.problems)} problem(s) (roles from {cas_bin}: {roles}):")
        for check, message in report.problems:
            print(f"  [{check}] {message}")
        return 1
    print(f"check-infra: OK against {cas_bin} (roles: {roles})")
    for item in report.passed:
        print(f"  ok: {item}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
