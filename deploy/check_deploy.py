#!/usr/bin/env python3
"""Checks that the schema validators cannot make: that the deployment files agree with
each other, with the gateway's config and with the Docker build context.

  check_deploy.py manifests K8S_DIR ROOT OUT_DIR
      Cross-checks the manifests (names, selectors, ports, mounts, shutdown budget,
      memory sizing, placeholder Secrets) and writes OUT_DIR/Config.toml: the ConfigMap's
      config with its /etc/wsgate/certs/ paths pointed at OUT_DIR/certs/, a copy of the
      repository's development certs under the names the Deployment projects, for
      `gateway check-config`.
  check_deploy.py context ROOT OUT_DIR
      Works out the Docker build context from .dockerignore (docker-py's implementation
      of its rules), checks that every COPY source is in it, that no config or key
      material is, and that every workspace member's manifest and declared targets are
      (cargo loads them all even for `-p gateway`); copies the context to OUT_DIR and
      prints the Dockerfile's `cargo build` command.

Exit status 1 on any failed check, with one line per problem.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import tomllib
from pathlib import Path, PurePosixPath

import yaml

# Sizing placeholders (deploy/README.md "Sizing"): keep in step with the README.
KIB_PER_SESSION = 40
BASE_MIB = 64
# Seconds of grace kept beyond preStop + drain.
GRACE_MARGIN_S = 5

problems: list[str] = []


def fail(msg: str) -> None:
    problems.append(msg)


def finish(ok_msg: str) -> None:
    if problems:
        for p in problems:
            print(f"FAIL: {p}")
        sys.exit(1)
    print(ok_msg)


def duration_s(text: str) -> float:
    """A humantime duration as the config writes it ("15s", "500ms", "1m 30s")."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "secs": 1, "m": 60, "min": 60, "mins": 60, "h": 3600}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != re.sub(r"\s+", "", text):
        raise ValueError(f"unreadable duration {text!r}")
    for number, unit in parts:
        if unit not in units:
            raise ValueError(f"unknown unit in {text!r}")
        total += float(number) * units[unit]
    return total


def quantity_mib(q: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(q))
    if not m:
        raise ValueError(f"unreadable quantity {q!r}")
    factor = {None: 1 / 2**20, "Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 2**20,
              "k": 1e3 / 2**20, "M": 1e6 / 2**20, "G": 1e9 / 2**20, "T": 1e12 / 2**20}
    return float(m.group(1)) * factor[m.group(2)]


def subset(sel: dict, labels: dict) -> bool:
    return bool(sel) and all(labels.get(k) == v for k, v in sel.items())


# ---------------------------------------------------------------------------- manifests

def load_manifests(k8s: Path) -> tuple[dict, dict, list[Path]]:
    objs: dict[tuple[str, str], dict] = {}
    files = sorted(p for p in k8s.glob("*.yaml") if p.name != "kustomization.yaml")
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            key = (doc.get("kind"), doc.get("metadata", {}).get("name"))
            if key in objs:
                fail(f"{path.name}: {key[0]} {key[1]} defined twice")
            doc["__file__"] = path.name
            objs[key] = doc
    kpath = k8s / "kustomization.yaml"
    kust = yaml.safe_load(kpath.read_text()) if kpath.exists() else {}
    return objs, kust, files


def one(objs: dict, kind: str) -> dict | None:
    found = [o for (k, _), o in objs.items() if k == kind]
    if len(found) != 1:
        fail(f"expected exactly one {kind}, found {len(found)}")
        return None
    return found[0]


def check_manifests(k8s: Path, root: Path, out: Path) -> None:
    objs, kust, files = load_manifests(k8s)

    # kustomization: lists every non-example manifest, and only existing ones.
    listed = set(kust.get("resources", []))
    for r in listed:
        if not (k8s / r).exists():
            fail(f"kustomization.yaml lists {r}, which does not exist")
    for f in files:
        if ".example." not in f.name and f.name not in listed:
            fail(f"{f.name} is not listed in kustomization.yaml resources")
        if ".example." in f.name and f.name in listed:
            fail(f"{f.name} is an example and must not be applied by kustomization.yaml")

    ns = kust.get("namespace")
    for (kind, name), o in objs.items():
        if kind != "Namespace" and ns and o["metadata"].get("namespace") not in (None, ns):
            fail(f"{o['__file__']}: {kind} {name} is in namespace "
                 f"{o['metadata'].get('namespace')}, kustomization says {ns}")

    dep = one(objs, "Deployment")
    cm = one(objs, "ConfigMap")
    svc = one(objs, "Service")
    pdb = one(objs, "PodDisruptionBudget")
    hpa = one(objs, "HorizontalPodAutoscaler")
    if not (dep and cm and svc and pdb and hpa):
        return

    spec = dep["spec"]
    pod_labels = spec["template"]["metadata"].get("labels", {})
    if not subset(spec["selector"].get("matchLabels", {}), pod_labels):
        fail("Deployment selector does not match its pod template labels")
    if not subset(svc["spec"].get("selector", {}), pod_labels):
        fail("Service selector does not match the Deployment's pods")
    if not subset(pdb["spec"]["selector"].get("matchLabels", {}), pod_labels):
        fail("PodDisruptionBudget selector does not match the Deployment's pods")
    for (kind, _), o in objs.items():
        if kind == "NetworkPolicy" and not subset(
                o["spec"]["podSelector"].get("matchLabels", {}), pod_labels):
            fail(f"{o['__file__']}: NetworkPolicy podSelector does not match the Deployment's pods")
    ref = hpa["spec"]["scaleTargetRef"]
    if (ref.get("kind"), ref.get("name")) != ("Deployment", dep["metadata"]["name"]):
        fail(f"HPA targets {ref.get('kind')} {ref.get('name')}, not the Deployment")
    if hpa["spec"].get("minReplicas", 1) < 2:
        fail("HPA minReplicas below 2: a drain would leave no gateway")

    pod = spec["template"]["spec"]
    containers = pod["containers"]
    if len(containers) != 1:
        fail("expected one container in the Deployment")
        return
    c = containers[0]

    # Image: the one kustomization.yaml rewrites.
    image_names = {i.get("name") for i in kust.get("images", [])}
    if image_names and c["image"].rsplit(":", 1)[0] not in image_names:
        fail(f"container image {c['image']} is not the one kustomization.yaml sets")

    # --config: a file of the mounted ConfigMap.
    args = c.get("args", [])
    if "--config" not in args:
        fail("container args do not pass --config")
        return
    cfg_path = PurePosixPath(args[args.index("--config") + 1])
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    cfg_mount = next((m for m in mounts.values()
                      if PurePosixPath(m["mountPath"]) == cfg_path.parent), None)
    if not cfg_mount:
        fail(f"no volume is mounted at {cfg_path.parent} (from --config {cfg_path})")
        return
    if cfg_mount.get("subPath"):
        fail("the config volume uses subPath: the pod would never see ConfigMap updates")
    vol = volumes.get(cfg_mount["name"], {})
    if vol.get("configMap", {}).get("name") != cm["metadata"]["name"]:
        fail(f"volume {cfg_mount['name']} at {cfg_path.parent} is not ConfigMap {cm['metadata']['name']}")
    text = cm.get("data", {}).get(cfg_path.name)
    if text is None:
        fail(f"ConfigMap has no key {cfg_path.name}")
        return
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        fail(f"ConfigMap {cfg_path.name} is not valid TOML: {e}")
        return

    # Ports: the config's listeners, the container's ports, the probes, the Service.
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}

    def port_of(p):
        return ports.get(p) if isinstance(p, str) else p

    server_listen = config.get("server", {}).get("listen", "0.0.0.0:9090")
    admin = config.get("admin", {})
    admin_listen = admin.get("listen", "127.0.0.1:9091")
    server_host, server_port = server_listen.rsplit(":", 1)
    admin_host, admin_port = admin_listen.rsplit(":", 1)
    if server_host not in ("0.0.0.0", "[::]"):
        fail(f"[server] listen {server_listen} is not reachable on the pod IP")
    if admin.get("enabled", True) is not True:
        fail("[admin] is disabled: the probes need it")
    if admin_host not in ("0.0.0.0", "[::]"):
        fail(f"[admin] listen {admin_listen}: the kubelet's probes cannot reach loopback; use 0.0.0.0:{admin_port}")
    if int(server_port) not in ports.values():
        fail(f"[server] listen port {server_port} is not a containerPort")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c.get(probe, {}).get("httpGet")
        if not get:
            fail(f"no {probe} httpGet")
            continue
        if get.get("path") != path:
            fail(f"{probe} checks {get.get('path')}, expected {path}")
        if port_of(get.get("port")) != int(admin_port):
            fail(f"{probe} port {get.get('port')} is not the admin port {admin_port}")
    for p in svc["spec"]["ports"]:
        if port_of(p.get("targetPort", p["port"])) != int(server_port):
            fail(f"Service port {p.get('name')} targets {p.get('targetPort')}, not the WSS port {server_port}")
        if port_of(p.get("targetPort")) == int(admin_port):
            fail("the Service exposes the admin port")

    # Files the config names: absolute, under a mounted Secret volume, and provided.
    provided: dict[PurePosixPath, tuple[str, str]] = {}  # path -> (secret, key)
    for m in mounts.values():
        v = volumes.get(m["name"], {})
        base = PurePosixPath(m["mountPath"])
        sources = []
        if "secret" in v:
            sources.append({"secret": v["secret"]})
        sources += v.get("projected", {}).get("sources", [])
        for s in sources:
            sec = s.get("secret")
            if not sec:
                continue
            name = sec.get("name") or sec.get("secretName")
            for item in sec.get("items", []):
                provided[base / item["path"]] = (name, item["key"])
    secrets = {n: o for (k, n), o in objs.items() if k == "Secret"}
    cert_map: dict[str, PurePosixPath] = {}
    for section, key, default in (("tls", "cert", "certs/server.crt"),
                                  ("tls", "key", "certs/server.key"),
                                  ("auth", "public_key", "certs/jwt-public.pem")):
        p = PurePosixPath(config.get(section, {}).get(key, default))
        if not p.is_absolute():
            p = cfg_path.parent / p
        if p not in provided:
            fail(f"[{section}].{key} = {p}: no mounted Secret item provides it")
            continue
        sname, skey = provided[p]
        sec = secrets.get(sname)
        if sec is None:
            fail(f"[{section}].{key}: Secret {sname} has no example manifest")
        elif skey not in {**sec.get("data", {}), **sec.get("stringData", {})}:
            fail(f"[{section}].{key}: Secret {sname} has no key {skey}")
        cert_map[f"{section}.{key}"] = p

    # Example Secrets hold placeholders, never key material.
    for name, sec in secrets.items():
        if ".example." not in sec["__file__"]:
            fail(f"Secret {name} lives in {sec['__file__']}, which kustomization may apply; keep Secrets in *.example.yaml")
        for k, v in {**sec.get("stringData", {}), **sec.get("data", {})}.items():
            body = [ln for ln in str(v).splitlines() if ln and not ln.startswith("-----")]
            if "REPLACE" not in str(v) or any(re.fullmatch(r"[A-Za-z0-9+/=]{40,}", ln) for ln in body):
                fail(f"Secret {name} key {k} does not look like a placeholder")

    # Shutdown: the grace period covers preStop + drain + a margin.
    grace = pod.get("terminationGracePeriodSeconds", 30)
    pre = c.get("lifecycle", {}).get("preStop", {})
    pre_s = pre.get("sleep", {}).get("seconds", 0) if "sleep" in pre else 0
    if "exec" in pre:
        fail("preStop uses exec, but the distroless image has no shell or sleep binary")
    drain = duration_s(config.get("timeouts", {}).get("drain", "10s"))
    if grace < pre_s + drain + GRACE_MARGIN_S:
        fail(f"terminationGracePeriodSeconds {grace} < preStop {pre_s} + drain {drain:g} + margin {GRACE_MARGIN_S}")

    # Memory: the request covers max_connections at the per-session placeholder.
    max_conn = config.get("limits", {}).get("max_connections", 100_000)
    need = BASE_MIB + max_conn * KIB_PER_SESSION / 1024
    res = c.get("resources", {})
    req = res.get("requests", {}).get("memory")
    lim = res.get("limits", {}).get("memory")
    if not req:
        fail("no memory request")
    elif quantity_mib(req) < need:
        fail(f"memory request {req} < {BASE_MIB} MiB + {max_conn} sessions x {KIB_PER_SESSION} KiB = {need:.0f} MiB")
    if lim and req and quantity_mib(lim) < quantity_mib(req):
        fail("memory limit below the request")
    if not res.get("requests", {}).get("cpu"):
        fail("no CPU request: the CPU-based HPA needs one")

    # Non-root, matching the Dockerfile's numeric USER.
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    if not (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")):
        fail("runAsNonRoot is not set")
    dockerfile = root / "Dockerfile"
    if dockerfile.exists():
        users = re.findall(r"^USER\s+(\d+)", dockerfile.read_text(), re.M)
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        if users and uid is not None and int(users[-1]) != uid:
            fail(f"runAsUser {uid} differs from the Dockerfile's USER {users[-1]}")

    # The config, with its certificate paths pointed at a copy of the dev certs.
    out.mkdir(parents=True, exist_ok=True)
    (out / "certs").mkdir(exist_ok=True)
    local = text
    for p in cert_map.values():
        src = root / "certs" / p.name
        if not src.exists():
            fail(f"no development file certs/{p.name} to stand in for {p}")
            continue
        shutil.copyfile(src, out / "certs" / p.name)
        local = local.replace(f'"{p}"', f'"{out / "certs" / p.name}"')
    (out / "Config.toml").write_text(local)

    finish(f"manifests: consistent ({len(objs)} objects); config written to {out / 'Config.toml'}")


# ------------------------------------------------------------------------------ context

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    lines, cur = [], ""
    for raw in text.splitlines():
        s = raw.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        word, _, rest = cur.partition(" ")
        lines.append((word.upper(), rest.strip()))
        cur = ""
    return lines


def declared_targets(member: Path) -> list[str]:
    """Files cargo requires for a member's explicitly declared targets."""
    man = tomllib.loads((member / "Cargo.toml").read_text())
    pkg = man.get("package", {}).get("name", member.name)
    needed = []
    defaults = {"bin": ("src/bin/{}.rs", "src/bin/{}/main.rs"),
                "bench": ("benches/{}.rs", "benches/{}/main.rs"),
                "test": ("tests/{}.rs", "tests/{}/main.rs"),
                "example": ("examples/{}.rs", "examples/{}/main.rs")}
    lib = man.get("lib")
    if lib is not None:
        needed.append([lib.get("path", "src/lib.rs")])
    for kind, pats in defaults.items():
        for t in man.get(kind, []):
            if "path" in t:
                needed.append([t["path"]])
            else:
                alts = [p.format(t["name"]) for p in pats]
                if kind == "bin" and t["name"] == pkg:
                    alts.insert(0, "src/main.rs")
                needed.append(alts)
    build = man.get("package", {}).get("build")
    if isinstance(build, str):
        needed.append([build])
    return [" or ".join(alts) for alts in needed
            if not any((member / a).exists() for a in alts)]


def check_context(root: Path, out: Path) -> None:
    from docker.utils.build import exclude_paths  # docker-py: .dockerignore semantics

    ignore = root / ".dockerignore"
    patterns = [ln.strip() for ln in ignore.read_text().splitlines()
                if ln.strip() and not ln.strip().startswith("#")]
    included = exclude_paths(str(root), patterns, dockerfile="Dockerfile")
    files = sorted(p for p in included if (root / p).is_file())
    files = [f for f in files if f not in (".dockerignore", "Dockerfile")]

    # Nothing that is mounted at run time or secret, nor build output.
    for f in files:
        parts = PurePosixPath(f).parts
        if parts[0] in ("certs", ".git", "target") or "target" in parts:
            fail(f"build context contains {f}")
        elif f == "Config.toml" or re.search(r"\.(key|pem|crt|p12)$", f):
            fail(f"build context contains config or key material: {f}")

    # The workspace: root manifest, lock file, every member with its declared targets.
    for need in ("Cargo.toml", "Cargo.lock"):
        if need not in files:
            fail(f"build context lacks {need}")
    members = tomllib.loads((root / "Cargo.toml").read_text())["workspace"]["members"]
    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        dst = out / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, dst)
    for m in members:
        if not (out / m / "Cargo.toml").exists():
            fail(f"build context lacks workspace member {m}/Cargo.toml")
            continue
        for missing in declared_targets(out / m):
            fail(f"build context lacks {m}/{missing} (a declared target of {m})")

    # COPY sources exist in the context; the cargo command builds the gateway.
    text = (root / "Dockerfile").read_text()
    instrs = dockerfile_instructions(text)
    cargo_cmd = None
    for word, rest in instrs:
        if word in ("COPY", "ADD"):
            toks = shlex.split(rest)
            if any(t.startswith("--from") for t in toks):
                continue
            srcs = [t for t in toks if not t.startswith("--")][:-1]
            for s in srcs:
                s = s.rstrip("/") or "."
                if s == ".":
                    continue
                if not any(f == s or f.startswith(s + "/") for f in files):
                    fail(f"Dockerfile {word} {s}: not in the build context")
        if word == "RUN":
            m = re.search(r"(cargo build[^&;|]*)", rest)
            if m:
                cargo_cmd = m.group(1).strip()
    if not cargo_cmd:
        fail("no `cargo build` in the Dockerfile")
    else:
        toks = shlex.split(cargo_cmd)
        for need in ("--release", "--locked"):
            if need not in toks:
                fail(f"Dockerfile cargo build lacks {need}")
        if "-p" not in toks or toks[toks.index("-p") + 1] != "gateway":
            fail("Dockerfile cargo build does not select -p gateway")
        (out / ".cargo-build-command").write_text(cargo_cmd + "\n")

    # Build and runtime images on the same Debian release (glibc).
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    froms = [rest for w, rest in instrs if w == "FROM"]
    builder = froms[0] if froms else ""
    runtime = froms[-1] if froms else ""
    for name, val in args.items():
        builder = builder.replace("${" + name + "}", val)
        runtime = runtime.replace("${" + name + "}", val)
    debian = {"bookworm": "12", "trixie": "13", "bullseye": "11"}
    b = next((v for k, v in debian.items() if k in builder), None)
    r = re.search(r"debian(\d+)", runtime)
    if b and r and b != r.group(1):
        fail(f"builder ({builder}) and runtime ({runtime}) are on different Debian releases")
    if not re.search(r"^USER\s+\d+", text, re.M):
        fail("the Dockerfile sets no numeric non-root USER")
    ent = [rest for w, rest in instrs if w == "ENTRYPOINT"]
    copied = [shlex.split(rest)[-1] for w, rest in instrs if w == "COPY" and "--from" in rest]
    if ent and copied and ent[-1].strip('[]" ').split('"')[0] not in copied:
        fail(f"ENTRYPOINT {ent[-1]} is not the binary copied from the build stage ({copied})")

    finish(f"context: {len(files)} files, members {', '.join(members)} complete; "
           f"cargo command: {cargo_cmd}")


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "manifests":
        check_manifests(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    elif len(sys.argv) == 4 and sys.argv[1] == "context":
        check_context(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
