#!/usr/bin/python3
"""Checks docker/ (Dockerfile, compose.yaml, k8s/, scripts) against the programs it runs.

No container engine or Kubernetes cluster is needed, and none is used
(scripts/test_container.sh runs the images and the compose cluster for real).
The tests check:

- compose.yaml and every Kubernetes manifest parse as YAML; compose.yaml has
  nothing docker-compose 1.29 or podman-compose 1.0.3 cannot read (no
  top-level name:, every variable with a default), and `docker-compose
  config` accepts it where docker-compose is installed;
- every ps_server flag that the compose file, the manifests, the Dockerfile and
  entrypoint.sh use is in `ps_server --help`; every psctl command and flag they
  and docker/README.md use is in `psctl --help`; every worker flag is in
  `train_worker.py --help`;
- shard counts agree: --num_shards equals the shard services / StatefulSet
  replicas, indexes are 0..S-1 once each, every --servers list names every
  shard on its port; worker counts agree with --num_workers;
- one image per role: the Dockerfile's build stage builds only ps_server,
  psctl and psclient_stubs with a subset of CI's packages; the shard image
  installs the runtime package of every shared library the binaries load and
  no Python; the worker image has psclient's packages and PyTorch; both run
  as a numeric non-system uid; compose and the manifests use the right one;
- the root .dockerignore keeps tokens, .git, build trees and generated stubs
  out of the build context and lets in what the build needs;
- entrypoint.sh turns --shard_index=from_hostname into the pod ordinal;
- the compose and StatefulSet shard command lines, run as local processes
  through entrypoint.sh, serve a health check, two workers, `psctl lr set`,
  and leave a checkpoint at SIGTERM;
- `kubectl kustomize docker/k8s` builds (when kubectl is installed), and what
  it renders matches Kubernetes' API schemas, offline (k8s_schema/, with node
  and the npm package kubernetes-models; skipped without node and npm);
- every *.sh in the repository passes shellcheck.

Run by CTest (tests/deploy/CMakeLists.txt) with Debian's /usr/bin/python3 and
python3-yaml (a dependency of python3-torch in scripts/install_deps.sh). The
binaries come from the environment: PS_SERVER (required), PSCTL (checks that
need it are skipped when unset), PS_BUILD_DIR (the build tree, for psclient's
generated stubs and the schema check's npm packages).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import unittest
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
K8S = DOCKER / "k8s"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
ENTRYPOINT = DOCKER / "entrypoint.sh"
WORKER = DOCKER / "train_worker.py"
README = DOCKER / "README.md"
MAKE_SECRETS = DOCKER / "make_secrets.sh"
PYTHON = "/usr/bin/python3"

# Libraries that debian:bookworm-slim already holds (its required packages).
BASE_IMAGE_PACKAGES = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g"}

SHARD_SERVICE = re.compile(r"^shard-(\d+)$")
# shard-N:PORT (compose) or shard-N.<service>...:PORT (Kubernetes).
SHARD_ADDRESS = re.compile(r"^shard-(\d+)((?:\.[A-Za-z0-9-]+)*):(\d+)$")


# ------------------------------------------------------------------ helpers

def env_path(name: str) -> Optional[pathlib.Path]:
    value = os.environ.get(name, "")
    return pathlib.Path(value) if value else None


def run(command: Sequence[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def flags_of(args: Iterable[str]) -> Dict[str, Optional[str]]:
    """--name[=value] arguments -> {name: value}; the last one wins."""
    found: Dict[str, Optional[str]] = {}
    for arg in args:
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            found[name] = value if eq else None
    return found


def flag_names(args: Iterable[str]) -> List[str]:
    return [a[2:].partition("=")[0] for a in args if a.startswith("--") and len(a) > 2]


def load_docs(path: pathlib.Path) -> List[dict]:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ${NAME:-default} in compose.yaml (docker-compose and podman-compose both
# substitute it).
COMPOSE_VARIABLE = re.compile(r"\$\{([A-Z0-9_]+):-([^}]*)\}")


def with_defaults(value):
    """value with every ${NAME:-default} replaced by its default."""
    if isinstance(value, dict):
        return {k: with_defaults(v) for k, v in value.items()}
    if isinstance(value, list):
        return [with_defaults(v) for v in value]
    if isinstance(value, str):
        return COMPOSE_VARIABLE.sub(lambda m: m.group(2), value)
    return value


def compose(raw: bool = False) -> dict:
    """compose.yaml as run with none of its variables set (raw: as written)."""
    (doc,) = load_docs(COMPOSE)
    return doc if raw else with_defaults(doc)


def manifests() -> Dict[str, dict]:
    """kind -> the one manifest of that kind under docker/k8s (Kustomization too)."""
    by_kind: Dict[str, dict] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_docs(path):
            kind = doc["kind"]
            if kind in by_kind:
                raise AssertionError(f"two {kind} manifests; the tests expect one")
            by_kind[kind] = doc
    return by_kind


def shard_services(spec: dict) -> Dict[int, dict]:
    shards = {}
    for name, service in spec["services"].items():
        m = SHARD_SERVICE.match(name)
        if m:
            shards[int(m.group(1))] = service
    return shards


def worker_services(spec: dict) -> Dict[str, dict]:
    return {name: s for name, s in spec["services"].items()
            if any("train_worker.py" in str(a) for a in s.get("entrypoint") or [])}


def servers_of(args: Sequence[str]) -> List[str]:
    value = flags_of(args).get("servers") or ""
    return [s for s in value.split(",") if s]


def server_flags() -> Tuple[set, str]:
    binary = env_path("PS_SERVER")
    if binary is None or not binary.is_file():
        raise unittest.SkipTest("PS_SERVER (the ps_server binary) is not set or not built")
    out = run([str(binary), "--help"])
    text = out.stdout + out.stderr
    flags = set(re.findall(r"^\s+--([a-z0-9_]+) \(", text, re.M))
    if "shard_index" not in flags:
        raise AssertionError(f"cannot read flags from `ps_server --help`:\n{text}")
    return flags, text


class PsctlHelp:
    """Commands (word tuples, with their positional arguments) and flags of psctl."""

    def __init__(self, text: str):
        self.text = text
        self.commands: Dict[Tuple[str, ...], Tuple[int, int]] = {}
        section = ""
        for line in text.splitlines():
            if line and not line.startswith(" "):
                section = line.strip().rstrip(":")
                continue
            if section == "Commands" and line.startswith("  ") and line.strip():
                usage = re.split(r"\s{2,}", line.strip())[0].split()
                words = tuple(w for w in usage if re.fullmatch(r"[a-z]+", w))
                required = sum(1 for w in usage if re.fullmatch(r"[A-Z_]+", w))
                optional = sum(1 for w in usage if w.startswith("["))
                if words:
                    self.commands[words] = (required, optional)
        self.flags = set(re.findall(r"^\s+--([a-z0-9_]+)\b", text, re.M))
        if not self.commands or "servers" not in self.flags:
            raise AssertionError(f"cannot read commands and flags from psctl --help:\n{text}")

    def check(self, args: Sequence[str]) -> List[str]:
        """Problems with one psctl argument list (empty when it is valid)."""
        problems = [f"unknown psctl flag --{n}" for n in flag_names(args)
                    if n not in self.flags]
        words = [a for a in args if not a.startswith("--")]
        for size in (2, 1):
            key = tuple(words[:size])
            if len(key) == size and key in self.commands:
                required, optional = self.commands[key]
                rest = len(words) - size
                if not required <= rest <= required + optional:
                    problems.append(f"psctl {' '.join(key)} takes {required} "
                                    f"argument(s), got {words[size:]}")
                return problems
        problems.append(f"unknown psctl command in {list(args)}")
        return problems


def psctl_help() -> PsctlHelp:
    binary = env_path("PSCTL")
    if binary is None or not binary.is_file():
        raise unittest.SkipTest("PSCTL is not set or psctl is not built: the psctl "
                                "commands and flags are not checked")
    out = run([str(binary), "--help"])
    return PsctlHelp(out.stdout + out.stderr)


def worker_flags() -> set:
    out = run([PYTHON, str(WORKER), "--help"],
              env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    if out.returncode != 0:
        raise AssertionError(f"train_worker.py --help failed:\n{out.stderr}")
    return set(re.findall(r"--([a-z0-9_]+)", out.stdout))


# Dockerfile ----------------------------------------------------------------

class Instruction:
    def __init__(self, stage: int, keyword: str, rest: str):
        self.stage = stage
        self.keyword = keyword
        self.rest = rest

    def exec_form(self) -> List[str]:
        """The JSON array of CMD / ENTRYPOINT / HEALTHCHECK ... CMD, or a shell split."""
        text = self.rest
        if self.keyword == "HEALTHCHECK":
            text = text[text.index("CMD") + 3:] if "CMD" in text else ""
        text = text.strip()
        if text.startswith("["):
            return json.loads(text)
        return shlex.split(text)


def dockerfile() -> List[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, by stage (0-based)."""
    instructions: List[Instruction] = []
    stage = -1
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(stage, keyword, rest.strip()))
    return instructions


def stages() -> List[Tuple[str, Optional[str]]]:
    """(image, name) of each FROM."""
    out = []
    for ins in dockerfile():
        if ins.keyword == "FROM":
            words = ins.rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            out.append((words[0], name))
    return out


# ------------------------------------------------------------------- tests

class YamlTest(unittest.TestCase):
    def test_compose_parses(self):
        spec = compose()
        self.assertIn("services", spec)
        self.assertTrue(shard_services(spec), "no shard-N services")

    def test_every_manifest_parses(self):
        paths = sorted(K8S.glob("*.yaml"))
        self.assertTrue(paths, "no manifests under docker/k8s")
        for path in paths:
            for doc in load_docs(path):
                with self.subTest(path=path.name, kind=doc.get("kind")):
                    self.assertIn("apiVersion", doc)
                    self.assertIn("kind", doc)
                    if doc["kind"] != "Kustomization":
                        self.assertTrue(doc.get("metadata", {}).get("name"))

    def test_kustomization_lists_every_manifest(self):
        listed = set(manifests()["Kustomization"].get("resources", []))
        present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
        self.assertEqual(listed, present)


class FlagsTest(unittest.TestCase):
    """Every flag used exists in the program's --help."""

    def assert_server_flags(self, args: Sequence[str], where: str) -> None:
        flags, _ = server_flags()
        # --help itself is Abseil's, and not in the list it prints.
        unknown = [n for n in flag_names(args) if n not in flags | {"help"}]
        self.assertFalse(unknown, f"{where}: flags not in `ps_server --help`: {unknown}")

    def test_compose_shard_flags(self):
        for index, service in shard_services(compose()).items():
            self.assert_server_flags(service["command"], f"compose shard-{index}")

    def test_statefulset_flags(self):
        (container,) = manifests()["StatefulSet"]["spec"]["template"]["spec"]["containers"]
        self.assertNotIn("command", container,
                         "the StatefulSet must keep the image's entrypoint")
        self.assert_server_flags(container["args"], "StatefulSet")

    def test_dockerfile_flags(self):
        for ins in dockerfile():
            if ins.keyword == "CMD":
                self.assert_server_flags(ins.exec_form(), "Dockerfile CMD")

    def test_readme_docker_run(self):
        text = README.read_text(encoding="utf-8")
        uses = re.findall(r"docker run --rm (?:-p \S+ )?parameter-server-shard ([^`\n#]+)",
                          text)
        self.assertTrue(uses, "docker/README.md shows no `docker run ... parameter-server-shard`")
        for args in uses:
            self.assert_server_flags(shlex.split(args), f"README: {args}")

    def test_entrypoint_defaults(self):
        lines = [l for l in ENTRYPOINT.read_text().splitlines()
                 if l.strip().startswith("exec ps_server")]
        self.assertEqual(len(lines), 1, "entrypoint.sh: one `exec ps_server` line")
        self.assert_server_flags(shlex.split(lines[0])[2:], "entrypoint.sh")

    def test_psctl_usage(self):
        helptext = psctl_help()
        uses: List[Tuple[str, List[str]]] = []
        for index, service in shard_services(compose()).items():
            test = service["healthcheck"]["test"]
            self.assertEqual(test[:2], ["CMD", "psctl"])
            uses.append((f"compose shard-{index} healthcheck", test[2:]))
        tool = compose()["services"]["psctl"]
        self.assertEqual(tool["entrypoint"][0], "psctl")
        uses.append(("compose psctl", tool["entrypoint"][1:] + tool.get("command", [])))
        for ins in dockerfile():
            if ins.keyword == "HEALTHCHECK":
                form = ins.exec_form()
                self.assertEqual(form[0], "psctl")
                uses.append(("Dockerfile HEALTHCHECK", form[1:]))
        for args in readme_psctl_commands():
            uses.append(("README", args))
        for where, args in uses:
            with self.subTest(where=where, args=args):
                self.assertEqual(helptext.check(args), [])

    def test_worker_flags(self):
        flags = worker_flags()
        for name, service in worker_services(compose()).items():
            unknown = [n for n in flag_names(service["command"]) if n not in flags]
            self.assertFalse(unknown, f"compose {name}: unknown worker flags {unknown}")
        job = manifests()["Job"]["spec"]["template"]["spec"]["containers"][0]
        self.assertIn("train_worker.py", " ".join(job["command"]))
        unknown = [n for n in flag_names(job["args"]) if n not in flags]
        self.assertFalse(unknown, f"Job: unknown worker flags {unknown}")


def readme_psctl_commands() -> List[List[str]]:
    """psctl argument lists in docker/README.md (compose run and kubectl exec)."""
    text = README.read_text(encoding="utf-8").replace("\\\n", " ")
    found = []
    tool = compose()["services"]["psctl"]
    for m in re.finditer(r"run --rm (?:--no-deps |-T )*psctl ([^`\n#]+)", text):
        found.append(tool["entrypoint"][1:] + shlex.split(m.group(1)))
    for m in re.finditer(r"kubectl exec \S+ -- psctl ([^`\n#]+)", text):
        found.append(shlex.split(m.group(1)))
    return found


class ComposeTest(unittest.TestCase):
    def setUp(self):
        self.spec = compose()
        self.shards = shard_services(self.spec)
        self.flags = {i: flags_of(s["command"]) for i, s in self.shards.items()}

    def test_shard_count_and_indexes(self):
        count = len(self.shards)
        self.assertEqual(sorted(self.shards), list(range(count)),
                         "shard services must be shard-0..shard-(S-1)")
        for index, flags in self.flags.items():
            with self.subTest(shard=index):
                self.assertEqual(flags.get("num_shards"), str(count))
                self.assertEqual(flags.get("shard_index"), str(index))
                self.assertEqual(flags.get("host"), "0.0.0.0")

    def test_shards_agree(self):
        # Everything but the index and the host ports is the same on every shard.
        def common(flags):
            return {k: v for k, v in flags.items() if k != "shard_index"}
        first = common(self.flags[0])
        for index, flags in self.flags.items():
            self.assertEqual(common(flags), first, f"shard-{index} differs from shard-0")

    def test_published_ports_are_fixed_and_distinct(self):
        published = []
        for index, service in self.shards.items():
            port = self.flags[index]["port"]
            self.assertTrue(port and port.isdigit() and port != "0",
                            f"shard-{index}: --port must be fixed")
            grpc_ports = [p for p in service.get("ports", [])
                          if str(p).split(":")[-1] == port]
            self.assertEqual(len(grpc_ports), 1, f"shard-{index} publishes {port} once")
            published.extend(str(p).rsplit(":", 1)[0] for p in service.get("ports", []))
        self.assertEqual(len(published), len(set(published)), "host ports collide")

    def assert_names_every_shard(self, servers: List[str], where: str) -> None:
        expected = [f"shard-{i}:{self.flags[i]['port']}" for i in range(len(self.shards))]
        self.assertEqual(servers, expected, f"{where}: --servers must list every shard")

    def test_workers(self):
        workers = worker_services(self.spec)
        self.assertGreaterEqual(len(workers), 1)
        indexes = []
        for name, service in workers.items():
            flags = flags_of(service["command"])
            self.assert_names_every_shard(servers_of(service["command"]), name)
            self.assertEqual(flags.get("num_workers"), str(len(workers)), name)
            indexes.append(int(flags["worker_index"]))
            self.assertEqual(service.get("restart"), "no", f"{name} must train and exit")
            for shard in self.shards:
                self.assertEqual(service["depends_on"][f"shard-{shard}"]["condition"],
                                 "service_healthy")
        self.assertEqual(sorted(indexes), list(range(len(workers))))
        if self.flags[0].get("consistency") == "sync":
            self.assertEqual(self.flags[0].get("num_workers"), str(len(workers)))

    def test_reads_with_compose_1_29_and_podman_compose(self):
        raw = compose(raw=True)
        self.assertNotIn("name", raw, "a top-level name: needs Compose v2 (use -p)")
        self.assertNotIn("version", raw)
        rest = COMPOSE_VARIABLE.sub("", COMPOSE.read_text())
        self.assertNotIn("$", rest, "every variable has a default: ${NAME:-default}")

    def test_docker_compose_accepts_it(self):
        tool = shutil.which("docker-compose")
        if not tool:
            self.skipTest("docker-compose (Debian: docker-compose, 1.29) is not installed")
        with tempfile.TemporaryDirectory() as tmp:
            made = run(["sh", str(MAKE_SECRETS), tmp])
            self.assertEqual(made.returncode, 0, made.stderr)
            env = dict(os.environ, PS_SECRETS_DIR=tmp)
            out = run([tool, "-p", "parameter-server", "-f", str(COMPOSE), "config", "-q"],
                      env=env)
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr)

    def test_one_image_per_role(self):
        shard_image = self.shards[0]["image"]
        self.assertTrue(shard_image.startswith("parameter-server-shard:"), shard_image)
        for index, service in self.shards.items():
            self.assertEqual(service["image"], shard_image, f"shard-{index}")
            self.assertEqual(service["build"]["target"], "shard")
        targets = [n for _, n in stages()]
        for name, service in worker_services(self.spec).items():
            self.assertTrue(service["image"].startswith("parameter-server-worker:"), name)
            self.assertEqual(service["build"]["target"], "worker")
            self.assertIn(service["build"]["target"], targets)
        self.assertEqual(self.spec["services"]["psctl"]["image"], shard_image)

    def test_ports_bind_loopback_only(self):
        for name, service in self.spec["services"].items():
            for port in service.get("ports", []):
                with self.subTest(service=name, port=port):
                    self.assertTrue(str(port).startswith("127.0.0.1:"))

    def test_psctl_service(self):
        tool = self.spec["services"]["psctl"]
        self.assertTrue(tool.get("profiles"), "psctl must not start with `up`")
        self.assert_names_every_shard(servers_of(tool["entrypoint"]), "psctl")
        token = flags_of(tool["entrypoint"]).get("token_file")
        self.assertEqual(token, "/run/secrets/admin_tokens")
        self.assertIn("admin_tokens", tool["secrets"])

    def test_healthchecks_reach_their_shard(self):
        for index, service in self.shards.items():
            test = service["healthcheck"]["test"]
            self.assertEqual(servers_of(test), [f"127.0.0.1:{self.flags[index]['port']}"])
            self.assertEqual(test[-1], "health")

    def test_tokens_come_from_secrets(self):
        declared = self.spec["secrets"]
        for index, service in self.shards.items():
            for flag in ("worker_tokens_file", "admin_tokens_file"):
                path = self.flags[index].get(flag) or ""
                m = re.fullmatch(r"/run/secrets/([a-z_]+)", path)
                self.assertTrue(m, f"shard-{index} --{flag}={path} is not a secret")
                self.assertIn(m.group(1), service["secrets"])
                self.assertIn(m.group(1), declared)
        script = MAKE_SECRETS.read_text()
        for name, secret in declared.items():
            self.assertEqual(secret["file"], f"./secrets/{name}")
            self.assertIn("${PS_SECRETS_DIR:-./secrets}",
                          compose(raw=True)["secrets"][name]["file"])
            self.assertIn(name.split("_")[0], script)

    def test_each_shard_has_its_checkpoint_volume(self):
        seen = set()
        for index, service in self.shards.items():
            directory = self.flags[index].get("checkpoint_dir")
            mounts = [v.split(":") for v in service["volumes"]]
            (volume,) = [m[0] for m in mounts if m[1] == directory]
            self.assertIn(volume, self.spec["volumes"])
            self.assertNotIn(volume, seen, "shards share a checkpoint volume")
            seen.add(volume)


class KubernetesTest(unittest.TestCase):
    def setUp(self):
        self.docs = manifests()
        self.sts = self.docs["StatefulSet"]
        self.pod = self.sts["spec"]["template"]["spec"]
        (self.container,) = self.pod["containers"]
        self.flags = flags_of(self.container["args"])
        self.replicas = self.sts["spec"]["replicas"]

    def test_replicas_equal_num_shards(self):
        self.assertEqual(self.flags.get("num_shards"), str(self.replicas))
        self.assertEqual(self.flags.get("shard_index"), "from_hostname",
                         "each pod takes its index from its name")
        self.assertEqual(self.flags.get("host"), "0.0.0.0")

    def test_headless_service(self):
        service = self.docs["Service"]
        self.assertEqual(service["spec"].get("clusterIP"), "None")
        self.assertEqual(service["metadata"]["name"], self.sts["spec"]["serviceName"])
        labels = self.sts["spec"]["template"]["metadata"]["labels"]
        for key, value in service["spec"]["selector"].items():
            self.assertEqual(labels.get(key), value)
        for key, value in self.sts["spec"]["selector"]["matchLabels"].items():
            self.assertEqual(labels.get(key), value)
        ports = {p["containerPort"] for p in self.container["ports"]}
        self.assertIn(int(self.flags["port"]), ports)

    def test_grpc_probes_on_the_port(self):
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            with self.subTest(probe=probe):
                self.assertEqual(self.container[probe]["grpc"]["port"],
                                 int(self.flags["port"]))

    def test_checkpoints_on_a_claim_per_shard(self):
        (template,) = self.sts["spec"]["volumeClaimTemplates"]
        mounts = {m["name"]: m["mountPath"] for m in self.container["volumeMounts"]}
        self.assertEqual(mounts[template["metadata"]["name"]], self.flags["checkpoint_dir"])

    def test_resources_requested(self):
        for kind in ("requests", "limits"):
            for what in ("cpu", "memory"):
                self.assertIn(what, self.container["resources"][kind])

    def test_tokens_from_the_secret(self):
        generated = {g["name"]: g for g in
                     self.docs["Kustomization"].get("secretGenerator", [])}
        keys = {name: {f.split("=")[0] for f in g["files"]} for name, g in generated.items()}
        for pod, container, flag_list in (
                (self.pod, self.container, ("worker_tokens_file", "admin_tokens_file")),
                (self.docs["Job"]["spec"]["template"]["spec"],
                 self.docs["Job"]["spec"]["template"]["spec"]["containers"][0],
                 ("token_file",))):
            volumes = {v["name"]: v for v in pod["volumes"]}
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            flags = flags_of(container["args"])
            for flag in flag_list:
                path = pathlib.PurePosixPath(flags[flag])
                secret = volumes[mounts[str(path.parent)]]["secret"]
                self.assertIn(secret["secretName"], keys)
                items = {i["path"]: i["key"] for i in secret.get("items", [])}
                self.assertIn(items.get(path.name, path.name), keys[secret["secretName"]])

    def test_job_names_every_shard(self):
        job = self.docs["Job"]
        spec = job["spec"]
        container = spec["template"]["spec"]["containers"][0]
        service = self.docs["Service"]["metadata"]["name"]
        expected = [f"shard-{i}.{service}:{self.flags['port']}" for i in range(self.replicas)]
        self.assertEqual(servers_of(container["args"]), expected)
        flags = flags_of(container["args"])
        self.assertEqual(spec.get("completionMode"), "Indexed")
        self.assertEqual(flags.get("num_workers"), str(spec["completions"]))
        self.assertEqual(spec["parallelism"], spec["completions"])
        self.assertEqual(flags.get("worker_index"), "$(WORKER_INDEX)")
        (env,) = [e for e in container["env"] if e["name"] == "WORKER_INDEX"]
        self.assertIn("job-completion-index", env["valueFrom"]["fieldRef"]["fieldPath"])
        if self.flags.get("consistency") == "sync":
            self.assertEqual(self.flags.get("num_workers"), str(spec["completions"]))

    def pods(self) -> List[Tuple[str, dict]]:
        return [(kind, self.docs[kind]["spec"]["template"]["spec"])
                for kind in ("StatefulSet", "Job")]

    def test_read_only_root_has_a_writable_tmp(self):
        for kind, pod in self.pods():
            volumes = {v["name"]: v for v in pod["volumes"]}
            for container in pod["containers"]:
                with self.subTest(kind=kind, container=container["name"]):
                    self.assertTrue(container["securityContext"]["readOnlyRootFilesystem"])
                    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
                    self.assertIn("/tmp", mounts)
                    self.assertIn("emptyDir", volumes[mounts["/tmp"]])

    def test_one_image_per_role(self):
        images = {kind: pod["containers"][0]["image"].split(":")[0]
                  for kind, pod in self.pods()}
        self.assertEqual(images, {"StatefulSet": "parameter-server-shard",
                                  "Job": "parameter-server-worker"})
        listed = {i["name"] for i in self.docs["Kustomization"].get("images", [])}
        self.assertEqual(listed, set(images.values()))

    def test_pod_names_are_shard_names(self):
        # Pods are <StatefulSet name>-<ordinal>; the Job's addresses use shard-N.
        self.assertEqual(self.sts["metadata"]["name"], "shard")

    def test_kustomize_builds(self):
        kubectl = shutil.which("kubectl")
        if not kubectl:
            self.skipTest("kubectl is not installed: `kubectl kustomize` not run")
        with tempfile.TemporaryDirectory() as tmp:
            copy = pathlib.Path(tmp) / "k8s"
            shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("secrets"))
            made = run(["sh", str(MAKE_SECRETS), str(copy / "secrets")])
            self.assertEqual(made.returncode, 0, made.stderr)
            out = run([kubectl, "kustomize", str(copy)])
            self.assertEqual(out.returncode, 0, out.stderr)
        docs = [d for d in yaml.safe_load_all(out.stdout) if d]
        kinds = sorted(d["kind"] for d in docs)
        self.assertEqual(kinds, ["Job", "Secret", "Service", "StatefulSet"])
        (secret,) = [d for d in docs if d["kind"] == "Secret"]
        name = secret["metadata"]["name"]
        for d in docs:
            if d["kind"] in ("StatefulSet", "Job"):
                names = [v["secret"]["secretName"]
                         for v in d["spec"]["template"]["spec"]["volumes"] if "secret" in v]
                self.assertEqual(names, [name])


K8S_SCHEMA = REPO / "tests" / "deploy" / "k8s_schema"


def rendered_manifests() -> List[dict]:
    """The objects `kubectl apply -k docker/k8s` would send, without a cluster.

    `kubectl kustomize` renders them where kubectl is installed (with token
    files made for the Secret); elsewhere, the manifests as written.
    """
    kubectl = shutil.which("kubectl")
    if not kubectl:
        return [d for d in manifests().values() if d["kind"] != "Kustomization"]
    with tempfile.TemporaryDirectory() as tmp:
        copy = pathlib.Path(tmp) / "k8s"
        shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("secrets"))
        made = run(["sh", str(MAKE_SECRETS), str(copy / "secrets")])
        if made.returncode != 0:
            raise AssertionError(made.stderr)
        out = run([kubectl, "kustomize", str(copy)])
        if out.returncode != 0:
            raise AssertionError(f"kubectl kustomize: {out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def schema_validator() -> List[str]:
    """The command that checks objects (a JSON array on stdin) against the API schemas.

    k8s_schema/validate.mjs with the npm package kubernetes-models, which `npm
    ci` installs once (pinned by package-lock.json) into the build tree
    (PS_BUILD_DIR/k8s_schema), or into a temporary folder without one.
    Skips the test where node or npm is missing.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        raise unittest.SkipTest("node and npm are needed for the Kubernetes schema check")
    tree = env_path("PS_BUILD_DIR")
    if tree is not None:
        folder = tree / "k8s_schema"
    else:
        folder = pathlib.Path(tempfile.mkdtemp(prefix="k8s_schema_"))
    folder.mkdir(parents=True, exist_ok=True)
    stale = False
    for name in ("package.json", "package-lock.json", "validate.mjs"):
        source, copy = K8S_SCHEMA / name, folder / name
        if not copy.is_file() or copy.read_bytes() != source.read_bytes():
            shutil.copyfile(source, copy)
            stale = stale or name != "validate.mjs"
    if stale or not (folder / "node_modules" / "kubernetes-models" / "package.json").is_file():
        out = run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=folder,
                  timeout=600)
        if out.returncode != 0:
            (folder / "package-lock.json").unlink(missing_ok=True)
            raise AssertionError(f"npm ci in {folder}:\n{out.stdout}{out.stderr}")
    return [node, str(folder / "validate.mjs")]


def validate_objects(objects: List[dict]) -> subprocess.CompletedProcess:
    return run(schema_validator(), input=json.dumps(objects), timeout=120)


class KubernetesSchemaTest(unittest.TestCase):
    """The manifests against Kubernetes' API schemas, offline (no cluster, no download)."""

    def test_manifests_match_the_api_schemas(self):
        objects = rendered_manifests()
        kinds = sorted(d["kind"] for d in objects)
        self.assertTrue({"Job", "Service", "StatefulSet"} <= set(kinds), kinds)
        out = validate_objects(objects)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertEqual(len(re.findall(r"^ok ", out.stdout, re.M)), len(objects), out.stdout)

    def test_the_check_catches_mistakes(self):
        sts = manifests()["StatefulSet"]
        typo = json.loads(json.dumps(sts))
        typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
        wrong_type = json.loads(json.dumps(sts))
        wrong_type["spec"]["replicas"] = "2"
        missing = json.loads(json.dumps(sts))
        del missing["spec"]["template"]["spec"]["containers"][0]["name"]
        for label, broken, expected in (
                ("unknown field", typo, "imagePullPolcy: not a field"),
                ("wrong type", wrong_type, "replicas must be integer"),
                ("missing required field", missing, "name")):
            with self.subTest(mistake=label):
                out = validate_objects([broken])
                self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
                self.assertIn(expected, out.stdout)


class DockerfileTest(unittest.TestCase):
    """docker/Dockerfile: a build stage and one image per role, shard and worker."""

    def stage(self, name: str) -> List[Instruction]:
        """The instructions of stage `name`, after those of the stages it is built FROM."""
        names = [n for _, n in stages()]
        index = names.index(name)
        image = stages()[index][0]
        parent = self.stage(image) if image in names else []
        return parent + [i for i in dockerfile() if i.stage == index]

    def test_stages(self):
        self.assertFalse(DOCKERFILE.read_text().startswith("# syntax="),
                         "a syntax line makes BuildKit fetch a frontend from Docker Hub")
        self.assertEqual([n for _, n in stages()], ["build", "shard", "worker-base", "worker"])
        self.assertEqual({image for image, n in stages() if n != "worker"}, {"${BASE_IMAGE}"})
        # worker-base needs nothing of the build stage (it is built while that
        # compiles); the worker image is worker-base plus the project's files.
        self.assertEqual(dict((n, i) for i, n in stages())["worker"], "worker-base")
        self.assertFalse([i for i in self.stage("worker-base") if "--from=" in i.rest])
        args = [i.rest for i in dockerfile() if i.keyword == "ARG" and i.stage == -1]
        self.assertEqual(args, ["BASE_IMAGE=debian:bookworm-slim"])

    def test_build_stage_builds_only_what_the_images_ship(self):
        runs = [i.rest for i in self.stage("build") if i.keyword == "RUN"]
        (build,) = [r for r in runs if "scripts/build.sh" in r]
        self.assertEqual(build.split("scripts/build.sh", 1)[1].split(),
                         ["ps_server", "psctl", "psclient_stubs", "psclient_core"])
        self.assertFalse(any("install_deps.sh" in r for r in runs),
                         "install_deps.sh installs the whole test and example stack")
        # The build packages are CI's (scripts/install_deps.sh), less the
        # test and example stack; g++ is part of build-essential there.
        ci = set(re.findall(r"[a-z0-9][a-z0-9+.-]+", re.search(
            r"packages=\((.*?)\)", (REPO / "scripts/install_deps.sh").read_text(),
            re.S).group(1)))
        installed = apt_installs(self.stage("build"))
        self.assertLessEqual(installed - {"g++"}, ci)
        # Python only to build the binding (psclient_core) against: the
        # interpreter and its headers, nothing from the test stack.
        self.assertLessEqual({p for p in installed if p.startswith("python3")},
                             {"python3", "python3-dev"},
                             "the build stage needs only python3 and its headers")

    def test_images_are_not_root(self):
        for name in ("shard", "worker"):
            with self.subTest(image=name):
                users = [i.rest for i in self.stage(name) if i.keyword == "USER"]
                self.assertTrue(users, "no USER")
                uid = users[-1].split(":")[0]
                self.assertTrue(uid.isdigit() and int(uid) >= 1000,
                                f"USER {users[-1]}: a numeric uid above the system range")
                runs = " ".join(i.rest for i in self.stage(name) if i.keyword == "RUN")
                self.assertIn(f"--uid {uid}", runs)
                self.assertNotIn("--system", runs)

    def test_shard_image_runs_ps_server(self):
        shard = self.stage("shard")
        (entry,) = [i for i in shard if i.keyword == "ENTRYPOINT"]
        (program,) = entry.exec_form()
        copies = [i.rest.split() for i in shard if i.keyword == "COPY"]
        self.assertIn(["docker/entrypoint.sh", f"/usr/local/bin/{program}"], copies)
        self.assertTrue(any(i.keyword == "EXPOSE" and "50051" in i.rest for i in shard))
        self.assertTrue(any(i.keyword == "HEALTHCHECK" for i in shard))

    def test_shard_image_has_no_python(self):
        installed = apt_installs(self.stage("shard"))
        self.assertFalse({p for p in installed if "python" in p}, installed)

    def test_worker_image_has_psclient_and_torch(self):
        worker = self.stage("worker")
        installed = apt_installs(worker)
        for package in ("python3", "python3-grpcio", "python3-protobuf", "python3-numpy",
                        "python3-torch"):
            self.assertIn(package, installed, "psclient and psclient.torch need it")
        env = " ".join(i.rest for i in worker if i.keyword == "ENV")
        copies = [i.rest.split() for i in worker if i.keyword == "COPY"]
        self.assertIn(["client/python/psclient", "/opt/ps/python/psclient"], copies)
        self.assertIn("PYTHONPATH=/opt/ps/python", env)
        self.assertIn("PSCLIENT_STUBS_DIR=/opt/ps/python", env)

    def test_copies_what_the_build_tree_holds(self):
        (build,) = [i.rest for i in self.stage("build") if "scripts/build.sh" in i.rest]
        m = re.search(r"BUILD_DIR=(\S+)", build)
        self.assertTrue(m, "build.sh must be given BUILD_DIR")
        build_dir = m.group(1).rstrip("/")
        sources = {}
        for name in ("shard", "worker"):
            sources[name] = [i.rest.split()[1] for i in self.stage(name)
                             if i.keyword == "COPY" and i.rest.startswith("--from=build")]
            for path in sources[name]:
                self.assertTrue(path.startswith(build_dir + "/"), path)
        relative = {n: {s[len(build_dir) + 1:] for s in paths} for n, paths in sources.items()}
        self.assertEqual(relative["worker"], {"python/proto", "python/psclient/"})
        tree = env_path("PS_BUILD_DIR")
        for variable in ("PS_SERVER", "PSCTL"):
            binary = env_path(variable)
            with self.subTest(binary=variable):
                if binary is None or tree is None:
                    self.skipTest(f"{variable} or PS_BUILD_DIR is not set")
                self.assertIn(str(binary.resolve().relative_to(tree.resolve())),
                              relative["shard"])
        if tree is not None:
            self.assertTrue((tree / "python" / "proto" / "ps" / "v1" / "ps_pb2.py").is_file())
            self.assertTrue(list((tree / "python" / "psclient").glob("_core*.so")))
        for name in ("shard", "worker"):
            for ins in self.stage(name):
                if ins.keyword == "COPY" and not ins.rest.startswith("--"):
                    self.assertTrue((REPO / ins.rest.split()[0]).exists(), ins.rest)
                    self.assertFalse(dockerignore_excludes(ins.rest.split()[0]),
                                     f"{ins.rest}: left out of the context by .dockerignore")

    def test_shard_packages_cover_shared_libraries(self):
        if not shutil.which("ldd") or not shutil.which("dpkg"):
            self.skipTest("ldd or dpkg missing")
        installed = apt_installs(self.stage("shard"))
        checked = 0
        for variable in ("PS_SERVER", "PSCTL"):
            binary = env_path(variable)
            if binary is None or not binary.is_file():
                continue
            checked += 1
            with self.subTest(binary=binary.name):
                needed = packages_of_libraries(binary)
                missing = sorted(needed - installed - BASE_IMAGE_PACKAGES)
                self.assertFalse(missing, f"{binary.name} needs {missing}, which the "
                                          "shard image does not install")
        if not checked:
            self.skipTest("no binary given (PS_SERVER, PSCTL)")


def apt_installs(instructions: Sequence[Instruction]) -> set:
    """The packages that `apt-get install` lines in these instructions name."""
    installed = set()
    for ins in instructions:
        if ins.keyword == "RUN" and "apt-get install" in ins.rest:
            words = ins.rest.split("apt-get install", 1)[1].split("&&")[0].split()
            installed |= {w for w in words if re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", w)}
    return installed


def dockerignore_patterns() -> List[Tuple[bool, str]]:
    """(exclude, pattern) of the repository's .dockerignore, in order."""
    out = []
    for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            out.append((not negated, line.lstrip("!").strip("/")))
    return out


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore leaves path out of the build context.

    Docker's rules, as the engines apply them: the last pattern that matches
    the path or one of its parent folders wins; `**/` matches any number of
    folders, none included. (scripts/test_container.sh checks the real
    engine's answer.)
    """
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for exclude, pattern in dockerignore_patterns():
        alternatives = [pattern]
        while alternatives[-1].startswith("**/"):
            alternatives.append(alternatives[-1][3:])
        for alternative in alternatives:
            regex = "^" + "".join(
                "(?:.*/)?" if c == "\0" else "[^/]*" if c == "*" else "[^/]" if c == "?"
                else re.escape(c) for c in alternative.replace("**/", "\0")) + "$"
            if any(re.match(regex, c) for c in candidates):
                excluded = exclude
                break
    return excluded


class DockerignoreTest(unittest.TestCase):
    def test_one_ignore_file_at_the_root(self):
        # BuildKit prefers docker/Dockerfile.dockerignore; the classic builder,
        # docker-compose 1.29 and podman read only the root one. One file.
        self.assertTrue((REPO / ".dockerignore").is_file())
        self.assertFalse((DOCKER / "Dockerfile.dockerignore").exists())

    def test_secrets_and_build_outputs_stay_out(self):
        for path in ("docker/secrets/worker_tokens", "docker/k8s/secrets/admin_tokens",
                     ".git/config", "build/CMakeCache.txt", "build-asan/x", "out/x.png",
                     "client/python/psclient/_proto/ps_pb2.py",
                     "client/python/psclient/__pycache__/client.cpython-311.pyc",
                     "tests/deploy/k8s_schema/node_modules/x/index.js"):
            with self.subTest(path=path):
                self.assertTrue(dockerignore_excludes(path))

    def test_what_the_build_needs_is_in(self):
        for path in ("CMakeLists.txt", "scripts/build.sh", "server/ps_server_main.cc",
                     "proto/ps/v1/ps.proto", "client/python/psclient/client.py",
                     "client/psctl/CMakeLists.txt", "tests/CMakeLists.txt",
                     "bench/CMakeLists.txt", "examples/CMakeLists.txt"):
            with self.subTest(path=path):
                self.assertFalse(dockerignore_excludes(path))
        # Every directory the top-level CMakeLists.txt adds, since configuring
        # reads them all.
        top = (REPO / "CMakeLists.txt").read_text()
        for sub in re.findall(r"^add_subdirectory\((\S+)\)", top, re.M):
            with self.subTest(subdirectory=sub):
                self.assertFalse(dockerignore_excludes(f"{sub}/CMakeLists.txt"))


def packages_of_libraries(binary: pathlib.Path) -> set:
    """The Debian packages of the shared libraries `ldd` says the binary loads."""
    out = run(["ldd", str(binary)])
    if out.returncode != 0:
        raise AssertionError(f"ldd {binary}: {out.stderr}")
    libraries: Dict[str, List[str]] = {}
    for line in out.stdout.splitlines():
        m = re.search(r"=>\s+(/\S+)", line) or re.match(r"\s*(/\S+)", line)
        if m:
            path = m.group(1)
            real = os.path.realpath(path)
            # /lib is /usr/lib on Debian 12; dpkg knows one of the spellings.
            libraries[path] = list(dict.fromkeys((path, real, "/usr" + path, "/usr" + real)))
    # One dpkg call for all of them (it is slow to start). Its status is 1
    # when some spelling is unknown; the lines found are still printed.
    query = sorted({c for candidates in libraries.values() for c in candidates})
    owners: Dict[str, str] = {}
    for line in run(["dpkg", "-S", *query]).stdout.splitlines():
        package, sep, path = line.partition(": ")
        if sep and not line.startswith("diversion"):
            owners[path.strip()] = package.split(",")[0].split(":")[0].strip()
    packages = set()
    for path, candidates in libraries.items():
        found = [owners[c] for c in candidates if c in owners]
        if not found:
            raise AssertionError(f"{binary.name}: no package owns {path}")
        packages.add(found[0])
    return packages


class EntrypointTest(unittest.TestCase):
    """entrypoint.sh, with a stand-in ps_server that prints its arguments."""

    def run_entrypoint(self, hostname: str, *args: str) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory() as tmp:
            fake = pathlib.Path(tmp) / "ps_server"
            fake.write_text('#!/bin/sh\nfor a do printf "%s\\n" "$a"; done\n')
            fake.chmod(0o755)
            env = dict(os.environ, PATH=f"{tmp}:/usr/bin:/bin", HOSTNAME=hostname)
            return run(["sh", str(ENTRYPOINT), *args], env=env)

    def test_defaults_then_arguments(self):
        out = self.run_entrypoint("anything", "--port=7000", "--optimizer=adam { } lr: 1")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.splitlines(),
                         ["--host=0.0.0.0", "--port=50051", "--port=7000",
                          "--optimizer=adam { } lr: 1"])

    def test_shard_index_from_hostname(self):
        for hostname, index in (("shard-0", "0"), ("shard-1", "1"), ("ps-shard-12", "12"),
                                ("shard-007", "7")):
            out = self.run_entrypoint(hostname, "--shard_index=from_hostname")
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertIn(f"--shard_index={index}", out.stdout.splitlines())

    def test_hostname_without_ordinal_is_refused(self):
        for hostname in ("shard", "shard-x", "shard-"):
            out = self.run_entrypoint(hostname, "--shard_index=from_hostname")
            self.assertEqual(out.returncode, 2, hostname)
            self.assertIn("from_hostname", out.stderr)
            self.assertEqual(out.stdout, "")


class ShellcheckTest(unittest.TestCase):
    def test_every_script_passes(self):
        shellcheck = shutil.which("shellcheck")
        if not shellcheck:
            self.skipTest("shellcheck is not installed (scripts/install_deps.sh installs it)")
        scripts = shell_scripts()
        self.assertIn(ENTRYPOINT, scripts)
        out = run([shellcheck, "--external-sources", *map(str, scripts)], timeout=120)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)


def shell_scripts() -> List[pathlib.Path]:
    """Every *.sh in the repository: git's view (tracked and new, not ignored)."""
    if (REPO / ".git").exists() and shutil.which("git"):
        out = run(["git", "-C", str(REPO), "ls-files", "--cached", "--others",
                   "--exclude-standard", "--", "*.sh"])
        if out.returncode == 0:
            return sorted({REPO / p for p in out.stdout.splitlines() if (REPO / p).is_file()})
    found = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith((".", "build", "out"))
                   and d != "__pycache__"]
        found.extend(pathlib.Path(root) / f for f in files if f.endswith(".sh"))
    return sorted(found)


class LocalRunTest(unittest.TestCase):
    """The shard, worker and psctl command lines, run as local processes.

    Only what a container provides is changed: addresses (127.0.0.1, port 0),
    the token files (written by make_secrets.sh) and the checkpoint folders.
    Shards start through entrypoint.sh, as in the image.
    """

    def setUp(self):
        self.server = env_path("PS_SERVER")
        if self.server is None or not self.server.is_file():
            self.skipTest("PS_SERVER is not set")
        self.psctl = env_path("PSCTL")
        if self.psctl is not None and not self.psctl.is_file():
            self.psctl = None
        tree = env_path("PS_BUILD_DIR")
        self.stubs = tree / "python" if tree else None
        if self.stubs is None or not (self.stubs / "proto/ps/v1/ps_pb2.py").is_file():
            self.skipTest("psclient stubs are not built (PS_BUILD_DIR/python)")
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="deploy_test_"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        made = run(["sh", str(MAKE_SECRETS), str(self.tmp / "secrets")])
        self.assertEqual(made.returncode, 0, made.stderr)
        self.procs: List[subprocess.Popen] = []
        self.addCleanup(self.kill_all)

    def kill_all(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def local_path(self, path: str, hostname: str) -> str:
        if path.startswith(("/run/secrets/", "/etc/ps/tokens/")):
            return str(self.tmp / "secrets" / pathlib.PurePosixPath(path).name)
        return str(self.tmp / f"checkpoints-{hostname}")

    def start_shard(self, args: Sequence[str], hostname: str) -> Tuple[subprocess.Popen, int]:
        local = []
        for arg in args:
            name, _, value = arg[2:].partition("=")
            if name == "host":
                arg = "--host=127.0.0.1"
            elif name in ("port", "metrics_port"):
                arg = f"--{name}=0"
            elif name in ("worker_tokens_file", "admin_tokens_file", "checkpoint_dir"):
                arg = f"--{name}={self.local_path(value, hostname)}"
            local.append(arg)
        log = open(self.tmp / f"{hostname}.log", "w")
        self.addCleanup(log.close)
        env = dict(os.environ, HOSTNAME=hostname,
                   PATH=f"{self.server.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        proc = subprocess.Popen(["sh", str(ENTRYPOINT), *local], stdout=subprocess.PIPE,
                                stderr=log, text=True, env=env)
        self.procs.append(proc)
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        m = re.search(r"listening on \S+:(\d+)", line)
        if not m:
            proc.kill()
            self.fail(f"{hostname} did not start: {line!r}\n"
                      f"{(self.tmp / f'{hostname}.log').read_text()}")
        return proc, int(m.group(1))

    def local_servers(self, args: Sequence[str], ports: Dict[int, int],
                      configured_port: str) -> List[str]:
        """--servers=... with every shard address replaced by its local one."""
        out = []
        for arg in args:
            if arg.startswith("--servers="):
                addresses = []
                for address in arg.split("=", 1)[1].split(","):
                    m = SHARD_ADDRESS.match(address)
                    self.assertTrue(m, f"not a shard address: {address}")
                    self.assertEqual(m.group(3), configured_port, address)
                    addresses.append(f"127.0.0.1:{ports[int(m.group(1))]}")
                arg = "--servers=" + ",".join(addresses)
            elif arg.startswith("--token_file="):
                arg = "--token_file=" + self.local_path(arg.split("=", 1)[1], "")
            out.append(arg)
        return out

    def run_psctl(self, args: Sequence[str]) -> subprocess.CompletedProcess:
        out = run([str(self.psctl), *args])
        self.assertEqual(out.returncode, 0, f"psctl {list(args)}:\n{out.stdout}{out.stderr}")
        return out

    def exercise(self, shard_args: Dict[str, List[str]], port: str,
                 worker_args: List[List[str]], healthcheck: Optional[List[str]]) -> None:
        procs, ports = {}, {}
        for hostname, args in shard_args.items():
            index = int(SHARD_SERVICE.match(hostname).group(1))
            procs[index], ports[index] = self.start_shard(args, hostname)

        if self.psctl is not None and healthcheck is not None:
            for index in ports:
                args = [f"--servers=127.0.0.1:{ports[index]}" if a.startswith("--servers=")
                        else a for a in healthcheck]
                self.run_psctl(args)

        env = dict(os.environ, PSCLIENT_STUBS_DIR=str(self.stubs),
                   PYTHONPATH=str(REPO / "client" / "python"), PYTHONDONTWRITEBYTECODE="1")
        workers = []
        for args in worker_args:
            local = self.local_servers(args, ports, port)
            workers.append(subprocess.Popen(
                [PYTHON, str(WORKER), *local, "--steps=300", "--step_delay_s=0",
                 "--log_every=100", "--min_accuracy=0.5"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
            self.procs.append(workers[-1])
        for worker in workers:
            output, _ = worker.communicate(timeout=180)
            self.assertEqual(worker.returncode, 0, output)
            self.assertRegex(output, r"done after 300 steps")

        if self.psctl is not None:
            tool = compose()["services"]["psctl"]
            lr_sets = [a for a in readme_psctl_commands()
                       if "lr" in a and "set" in a and a[:len(tool["entrypoint"]) - 1]
                       == tool["entrypoint"][1:]]
            self.assertTrue(lr_sets, "docker/README.md shows no `run --rm psctl lr set`")
            lr_set = lr_sets[0]
            rate = float(lr_set[-1])
            self.run_psctl(self.local_servers(lr_set, ports, port))
            got = self.run_psctl(self.local_servers(
                tool["entrypoint"][1:] + ["--json", "optimizer", "get"], ports, port))
            answer = json.loads(got.stdout)
            self.assertEqual({s["config"]["learning_rate"] for s in answer["shards"]}, {rate})

        for index, proc in procs.items():
            proc.send_signal(signal.SIGTERM)
        for index, proc in procs.items():
            self.assertEqual(proc.wait(timeout=60), 0, f"shard {index} exit status")
        for hostname in shard_args:
            folder = self.tmp / f"checkpoints-{hostname}"
            complete = [p for p in folder.iterdir() if not p.name.endswith(".tmp")]
            self.assertTrue(complete, f"{hostname} left no checkpoint")

    def test_compose_command_lines(self):
        spec = compose()
        shards = shard_services(spec)
        port = flags_of(shards[0]["command"])["port"]
        self.exercise({f"shard-{i}": s["command"] for i, s in shards.items()}, port,
                      [w["command"] for w in worker_services(spec).values()],
                      shards[0]["healthcheck"]["test"][2:])

    def test_statefulset_command_lines(self):
        docs = manifests()
        sts = docs["StatefulSet"]
        (container,) = sts["spec"]["template"]["spec"]["containers"]
        port = flags_of(container["args"])["port"]
        job = docs["Job"]
        worker = job["spec"]["template"]["spec"]["containers"][0]
        workers = [[a.replace("$(WORKER_INDEX)", str(i)) for a in worker["args"]]
                   for i in range(job["spec"]["completions"])]
        self.exercise({f"shard-{i}": container["args"]
                       for i in range(sts["spec"]["replicas"])}, port, workers, None)


if __name__ == "__main__":
    unittest.main(verbosity=2)
