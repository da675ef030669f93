#!/usr/bin/env python3
"""Tests of the Damselfly Helm chart, run by ../test.sh.

For the default values and each tests/values-*.yaml: `helm lint --strict`, `helm template`,
every rendered object checked against Kubernetes' schemas (kubernetes-validate, strict, for
the newest Kubernetes it bundles and for the chart's oldest supported one), then assertions on
what the deployment depends on, with expectations computed here from the values (merged over
the chart's values.yaml) and from Dragonfly's conventions, not read back from the templates.
Then checksum behaviour, naming, and values the chart must refuse.

helm runs in a network namespace of its own when `unshare -n` works: it contacts nothing.
Prints "N passed, M failed"; exits 1 if anything failed.
"""

import argparse
import copy
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import traceback
from urllib.parse import urlparse

import kubernetes_validate
import yaml

# Dragonfly's layout inside the containers.
CONFIG_DIR = "/etc/dragonfly"
STORAGE_DIR = "/var/lib/dragonfly"
SOCKET_DIR = "/var/run/dragonfly"
# Where a component's TLS Secret or node directory is mounted, and the files in it: a
# Kubernetes TLS Secret's names with cert-manager's ca.crt, as `dfctl cert issue` writes them.
TLS_DIR = "/etc/damselfly/tls"
TLS_TRIPLE = {"caCert": f"{TLS_DIR}/ca.crt", "cert": f"{TLS_DIR}/tls.crt", "key": f"{TLS_DIR}/tls.key"}
TLS_KEYS = set(TLS_TRIPLE)
# Host directory that holds each runtime's configuration (dfinit's hostPath mount).
RUNTIME_DIRS = {
    "containerd": "/etc/containerd",
    "crio": "/etc/containers",
    "podman": "/etc/containers",
    "docker": "/etc/docker",
}
RUNTIME_CONFIG_FILES = {
    "containerd": "/etc/containerd/config.toml",
    "crio": "/etc/containers/registries.conf",
    "podman": "/etc/containers/registries.conf",
    "docker": "/etc/docker/daemon.json",
}
# Runtimes restarted after dfinit unless the values say otherwise: those that read their
# registry configuration only at start.
RESTARTED_BY_DEFAULT = {"crio", "docker"}
STANDARD_LABELS = [
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/component",
]
# kubernetes-validate has no schema for CRDs: the ServiceMonitor is checked structurally.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}


class Results:
    def __init__(self, verbose):
        self.passed = 0
        self.failed = 0
        self.skipped = 0
        self.verbose = verbose
        self.failures = []

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            if self.verbose:
                print(f"ok    {name}")
        else:
            self.failed += 1
            message = f"FAIL  {name}" + (f": {detail}" if detail else "")
            self.failures.append(message)
            print(message)
        return ok

    def skip(self, name, why):
        self.skipped += 1
        print(f"SKIP  {name}: {why}")

    def equal(self, name, got, want):
        return self.check(name, got == want, f"got {got!r}, want {want!r}")


def deep_merge(base, override):
    """Helm's values merge: maps merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class Helm:
    def __init__(self, binary, chart, isolate):
        self.binary = binary
        self.chart = chart
        self.home = tempfile.mkdtemp(prefix="damselfly-helm-")
        self.prefix = ["unshare", "-n"] if isolate else []

    def run(self, *args):
        env = dict(os.environ)
        for var, sub in (("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"),
                         ("HELM_DATA_HOME", "data")):
            env[var] = os.path.join(self.home, sub)
        proc = subprocess.run(self.prefix + [self.binary, *args], capture_output=True, text=True,
                              env=env, stdin=subprocess.DEVNULL, timeout=120)
        return proc.returncode, proc.stdout, proc.stderr

    @staticmethod
    def value_args(files=(), sets=(), set_json=()):
        args = []
        for f in files:
            args += ["-f", f]
        for s in sets:
            args += ["--set", s]
        for s in set_json:
            args += ["--set-json", s]
        return args

    def template(self, release="edge", namespace="p2p", files=(), sets=(), set_json=()):
        return self.run("template", release, self.chart, "--namespace", namespace,
                        *self.value_args(files, sets, set_json))

    def lint(self, files=()):
        return self.run("lint", "--strict", self.chart, *self.value_args(files))

    def cleanup(self):
        shutil.rmtree(self.home, ignore_errors=True)


def load_docs(text):
    return [d for d in yaml.safe_load_all(text) if d]


class Render:
    """One `helm template` output, indexed."""

    def __init__(self, docs, release, namespace, values):
        self.docs = docs
        self.release = release
        self.namespace = namespace
        self.values = values
        self.by_key = {(d["kind"], d["metadata"]["name"]): d for d in docs}

    def get(self, kind, name):
        return self.by_key.get((kind, name))

    def of_kind(self, kind):
        return [d for d in self.docs if d["kind"] == kind]

    def config_file(self, configmap, key):
        cm = self.get("ConfigMap", configmap)
        if not cm or key not in cm.get("data", {}):
            return None
        return yaml.safe_load(cm["data"][key])


def expected_fullname(release, values):
    if values.get("fullnameOverride"):
        name = values["fullnameOverride"]
    else:
        chart = values.get("nameOverride") or "damselfly"
        name = release if chart in release else f"{release}-{chart}"
    return name[:40].rstrip("-")


def pod_spec(workload):
    return workload["spec"]["template"]["spec"]


def container(workload, name, init=False):
    key = "initContainers" if init else "containers"
    for c in pod_spec(workload).get(key, []):
        if c["name"] == name:
            return c
    return None


def arg_value(args, flag):
    """The value after FLAG in an argument list, or None."""
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
    return None


def volume(workload, name):
    for v in pod_spec(workload).get("volumes", []):
        if v["name"] == name:
            return v
    return None


def mount(c, path):
    for m in c.get("volumeMounts", []):
        if m["mountPath"] == path:
            return m
    return None


def env_field(c, name):
    for e in c.get("env", []):
        if e["name"] == name:
            return e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    return None


def port_by_name(c, name):
    for p in c.get("ports", []):
        if p.get("name") == name:
            return p["containerPort"]
    return None


def port_protocol(c, name):
    for p in c.get("ports", []):
        if p.get("name") == name:
            return p.get("protocol", "TCP")
    return None


def tls_source(tls):
    """'secret', 'hostPath' or None, from a component's tls values."""
    if tls.get("secretName"):
        return "secret"
    if tls.get("hostPath"):
        return "hostPath"
    return None


def without_tls(section):
    return {k: x for k, x in section.items() if k not in TLS_KEYS}


def image_ref(values, image, app_version):
    registry = values["global"].get("imageRegistry") or image.get("registry")
    repo = f"{registry}/{image['repository']}" if registry else image["repository"]
    if image.get("digest"):
        return f"{repo}@{image['digest']}"
    return f"{repo}:{image.get('tag') or app_version}"


class ChartTests:
    def __init__(self, helm, results, chart_dir, k8s_versions):
        self.helm = helm
        self.r = results
        self.chart_dir = chart_dir
        self.k8s_versions = k8s_versions
        with open(os.path.join(chart_dir, "values.yaml")) as f:
            self.defaults = yaml.safe_load(f)
        with open(os.path.join(chart_dir, "Chart.yaml")) as f:
            self.chart_meta = yaml.safe_load(f)
        self.app_version = str(self.chart_meta["appVersion"])

    # ---- one value set -------------------------------------------------------------------

    def value_set(self, label, path, release, namespace):
        r = self.r
        files = [path] if path else []
        overrides = {}
        if path:
            with open(path) as f:
                overrides = yaml.safe_load(f) or {}
        values = deep_merge(self.defaults, overrides)

        rc, out, err = self.helm.lint(files)
        r.check(f"[{label}] helm lint --strict", rc == 0, (out + err).strip()[-2000:])
        rc, out, err = self.helm.template(release, namespace, files)
        if not r.check(f"[{label}] helm template", rc == 0, err.strip()[-2000:]):
            return None
        try:
            docs = load_docs(out)
        except yaml.YAMLError as e:
            r.check(f"[{label}] rendered YAML parses", False, str(e))
            return None
        render = Render(docs, release, namespace, values)
        self.schema_validate(label, docs)
        self.common(label, render)
        self.scheduler(label, render)
        self.dynconfig(label, render)
        self.dfdaemon(label, render)
        self.dfinit(label, render)
        self.seed_peer(label, render)
        self.metrics(label, render)
        self.global_settings(label, render)
        return render

    def schema_validate(self, label, docs):
        for version in self.k8s_versions:
            bad = []
            checked = 0
            for d in docs:
                if (d.get("apiVersion"), d.get("kind")) in CRD_KINDS:
                    continue
                try:
                    kubernetes_validate.validate(d, version, strict=True)
                    checked += 1
                except Exception as e:  # ValidationError, SchemaNotFoundError, ...
                    bad.append(f"{d.get('kind')}/{d.get('metadata', {}).get('name')}: "
                               f"{str(e).splitlines()[0]}")
            self.r.check(f"[{label}] {checked} objects valid for Kubernetes {version} (strict)",
                         not bad and checked > 0, "; ".join(bad))

    def common(self, label, render):
        r = self.r
        fullname = expected_fullname(render.release, render.values)
        for d in render.docs:
            meta = d["metadata"]
            what = f"{d['kind']}/{meta['name']}"
            labels = meta.get("labels", {})
            r.check(f"[{label}] {what}: standard labels",
                    all(k in labels for k in STANDARD_LABELS)
                    and labels.get("app.kubernetes.io/instance") == render.release
                    and labels.get("app.kubernetes.io/managed-by") == "Helm",
                    f"labels {labels}")
            component = labels.get("app.kubernetes.io/component", "")
            r.check(f"[{label}] {what}: named <fullname>-<component>",
                    meta["name"].startswith(f"{fullname}-{component}") and len(meta["name"]) <= 63,
                    f"fullname {fullname!r}")
            r.equal(f"[{label}] {what}: namespace", meta.get("namespace"), render.namespace)

        workloads = [d for d in render.docs if d["kind"] in WORKLOAD_KINDS]
        for w in workloads:
            what = f"{w['kind']}/{w['metadata']['name']}"
            spec = pod_spec(w)
            tmpl_labels = w["spec"]["template"]["metadata"]["labels"]
            sel = w["spec"]["selector"]["matchLabels"]
            r.check(f"[{label}] {what}: selector matches its pods",
                    all(tmpl_labels.get(k) == v for k, v in sel.items()))
            checksum = w["spec"]["template"]["metadata"].get("annotations", {}).get("checksum/config", "")
            r.check(f"[{label}] {what}: checksum/config annotation",
                    re.fullmatch(r"[0-9a-f]{64}", str(checksum)) is not None, repr(checksum))
            r.equal(f"[{label}] {what}: no service account token", spec.get("automountServiceAccountToken"), False)
            names = {v["name"] for v in spec.get("volumes", [])}
            names |= {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
            for c in spec.get("initContainers", []) + spec["containers"]:
                r.check(f"[{label}] {what}/{c['name']}: explicit command", bool(c.get("command")))
                missing = [m["name"] for m in c.get("volumeMounts", []) if m["name"] not in names]
                r.check(f"[{label}] {what}/{c['name']}: every mount has a volume", not missing, str(missing))
            for v in spec.get("volumes", []):
                if "configMap" in v:
                    r.check(f"[{label}] {what}: ConfigMap {v['configMap']['name']} is rendered",
                            render.get("ConfigMap", v["configMap"]["name"]) is not None)

        # Every Service selects the pods of exactly one workload, on ports they declare.
        for svc in render.of_kind("Service"):
            what = f"Service/{svc['metadata']['name']}"
            sel = svc["spec"]["selector"]
            targets = [w for w in workloads
                       if all(w["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())]
            if not r.check(f"[{label}] {what}: selects one workload", len(targets) == 1,
                           f"{len(targets)} match {sel}"):
                continue
            main = pod_spec(targets[0])["containers"][0]
            for p in svc["spec"]["ports"]:
                target = p.get("targetPort", p["port"])
                declared = port_by_name(main, target) if isinstance(target, str) else target
                r.check(f"[{label}] {what}: port {p['name']} reaches a declared container port",
                        declared is not None and (isinstance(target, str) or any(
                            q["containerPort"] == target for q in main.get("ports", []))),
                        f"targetPort {target!r}")

    def scheduler(self, label, render):
        r = self.r
        v = render.values["scheduler"]
        name = f"{expected_fullname(render.release, render.values)}-scheduler"
        dep = render.get("Deployment", name)
        svc = render.get("Service", name)
        if not v["enable"]:
            r.check(f"[{label}] scheduler disabled: no scheduler objects",
                    dep is None and svc is None and render.get("ConfigMap", name) is None)
            return
        if not r.check(f"[{label}] scheduler Deployment {name}", dep is not None):
            return
        r.equal(f"[{label}] scheduler replicas", dep["spec"]["replicas"], v["replicas"])
        c = container(dep, "scheduler")
        r.equal(f"[{label}] scheduler command", c["command"], ["dfscheduler"])
        args = c["args"]
        r.equal(f"[{label}] scheduler --config", arg_value(args, "--config"), f"{CONFIG_DIR}/scheduler.yaml")
        r.check(f"[{label}] scheduler --console", "--console" in args)
        r.equal(f"[{label}] scheduler --log-level", arg_value(args, "--log-level"), v["logLevel"])
        r.equal(f"[{label}] scheduler image", c["image"], image_ref(render.values, v["image"], self.app_version))
        m = mount(c, CONFIG_DIR)
        r.check(f"[{label}] scheduler mounts its ConfigMap at {CONFIG_DIR}",
                m is not None and volume(dep, m["name"]).get("configMap", {}).get("name") == name)

        cfg = render.config_file(name, "scheduler.yaml")
        if not r.check(f"[{label}] scheduler.yaml rendered", isinstance(cfg, dict)):
            return
        want_port = v["config"]["server"]["port"]
        r.equal(f"[{label}] scheduler.yaml server", {k: x for k, x in cfg["server"].items() if k != "tls"},
                {"listenIP": "0.0.0.0", "port": want_port})
        self.scheduler_tls(label, cfg, dep, c, v["tls"])
        r.equal(f"[{label}] scheduler.yaml scheduler section", cfg["scheduler"], v["config"]["scheduler"])
        seed = v["config"]["seedPeer"]["enable"]
        r.equal(f"[{label}] scheduler.yaml seedPeer.enable", cfg["seedPeer"]["enable"],
                render.values["seedPeer"]["enable"] if seed is None else seed)
        r.equal(f"[{label}] scheduler.yaml metrics always on", cfg["metrics"]["enable"], True)
        m = re.fullmatch(r"[^:]*:([0-9]+)", str(cfg["metrics"]["addr"]))
        metrics_port = int(m.group(1)) if m else None
        r.equal(f"[{label}] scheduler.yaml metrics port", metrics_port, v["config"]["metrics"]["port"])
        for probe in ("livenessProbe", "readinessProbe"):
            get = c.get(probe, {}).get("httpGet", {})
            r.check(f"[{label}] scheduler {probe} GET /healthy on the metrics port {metrics_port}",
                    get.get("path") == "/healthy" and get.get("port") == metrics_port, str(get))
        r.equal(f"[{label}] scheduler declares gRPC port", port_by_name(c, "grpc"), want_port)

        # Non-root, read-only, no privilege.
        pod_sc = pod_spec(dep).get("securityContext", {})
        sc = c.get("securityContext", {})
        r.check(f"[{label}] scheduler runs as non-root uid 65532",
                pod_sc.get("runAsNonRoot") is True and pod_sc.get("runAsUser") == 65532, str(pod_sc))
        r.check(f"[{label}] scheduler: read-only root, no escalation, drops ALL",
                sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
                and sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc.get("privileged"), str(sc))

        # The headless Service the daemons resolve.
        if r.check(f"[{label}] scheduler Service {name}", svc is not None):
            r.equal(f"[{label}] scheduler Service is headless", svc["spec"].get("clusterIP"), "None")
            ports = svc["spec"]["ports"]
            r.check(f"[{label}] scheduler Service port grpc={want_port}",
                    len(ports) == 1 and ports[0]["name"] == "grpc" and ports[0]["port"] == want_port, str(ports))

    def scheduler_tls(self, label, cfg, dep, c, tls):
        r = self.r
        if tls_source(tls):
            # One certificate: the gRPC server's, and the client's towards seed peers.
            r.equal(f"[{label}] scheduler.yaml server.tls = mounted files", cfg["server"].get("tls"), TLS_TRIPLE)
            r.equal(f"[{label}] scheduler.yaml seedPeer.tls = mounted files", cfg["seedPeer"].get("tls"), TLS_TRIPLE)
        else:
            r.check(f"[{label}] scheduler.yaml without TLS",
                    "tls" not in cfg["server"] and "tls" not in cfg["seedPeer"], str(cfg["server"]))
        self.tls_mount(label, "scheduler", dep, c, tls, 0o440)
        if tls["secretName"]:
            sc = pod_spec(dep).get("securityContext", {})
            r.check(f"[{label}] scheduler: fsGroup lets uid {sc.get('runAsUser')} read the Secret",
                    bool(sc.get("fsGroup")), str(sc))

    def dynconfig(self, label, render):
        r = self.r
        v = render.values
        fullname = expected_fullname(render.release, v)
        port = v["scheduler"]["config"]["server"]["port"]
        if v["scheduler"]["enable"]:
            addr = f"{fullname}-scheduler.{render.namespace}.svc.{v['clusterDomain']}:{port}"
            want = {"scheduler": {"addr": addr}}
        elif v["externalScheduler"]["addrs"]:
            want = {"scheduler": {"addrs": v["externalScheduler"]["addrs"]}}
        else:
            want = {"scheduler": {"addr": v["externalScheduler"]["addr"]}}
        for comp, key in (("dfdaemon", "dfdaemon"), ("seed-peer", "seedPeer")):
            if not v[key]["enable"]:
                continue
            got = render.config_file(f"{fullname}-{comp}", "dynconfig.yaml")
            r.equal(f"[{label}] {comp} dynconfig.yaml", got, want)
            if "addr" in want["scheduler"] and v["scheduler"]["enable"]:
                # The name is the headless Service of this release, in this namespace.
                host, _, p = want["scheduler"]["addr"].rpartition(":")
                svc_name, svc_ns = host.split(".")[:2]
                svc = render.get("Service", svc_name)
                r.check(f"[{label}] {comp} dynconfig names a headless Service with port {p}",
                        svc is not None and svc_ns == render.namespace
                        and svc["spec"].get("clusterIP") == "None"
                        and any(sp["port"] == int(p) for sp in svc["spec"]["ports"]))

    def peer_config(self, label, comp, cfg, cv, cache_size, seed, v, cv_tls):
        """dfdaemon.yaml of a node daemon or seed peer against its config values cv, its tls
        values cv_tls (v: all values)."""
        r = self.r
        r.equal(f"[{label}] {comp} storage", cfg["storage"],
                {"dir": STORAGE_DIR, "keep": cv["storage"]["keep"],
                 "server": {"tcpPort": cv["storage"]["server"]["tcpPort"],
                            "quicPort": cv["storage"]["server"]["quicPort"]}})
        r.equal(f"[{label}] {comp} socket", cfg["download"]["server"]["socketPath"], f"{SOCKET_DIR}/dfdaemon.sock")
        upload = dict(cfg["upload"], server=without_tls(cfg["upload"]["server"]))
        upload.pop("client", None)
        r.equal(f"[{label}] {comp} upload", upload,
                {"server": {"port": cv["upload"]["server"]["port"]},
                 "bandwidthLimit": str(cv["upload"]["bandwidthLimit"])})
        dl = {k: cfg["download"][k] for k in cfg["download"] if k != "server"}
        want_dl = dict(cv["download"])
        for k in ("bandwidthLimit", "backToSourceBandwidthLimit"):
            want_dl[k] = str(want_dl[k])
        r.equal(f"[{label}] {comp} download limits", dl, want_dl)
        r.equal(f"[{label}] {comp} scheduler section", without_tls(cfg["scheduler"]), cv["scheduler"])
        self.peer_tls(label, comp, cfg, cv_tls)
        r.equal(f"[{label}] {comp} dynconfig refresh", cfg["dynconfig"], cv["dynconfig"])
        policy = dict(cv["gc"]["policy"], diskThreshold=str(cache_size))
        r.equal(f"[{label}] {comp} gc (diskThreshold = cache size)", cfg["gc"],
                {"interval": cv["gc"]["interval"], "policy": policy})
        r.equal(f"[{label}] {comp} metrics port", cfg["metrics"], {"server": {"port": cv["metrics"]["server"]["port"]}})
        r.equal(f"[{label}] {comp} health port", cfg["health"], {"server": {"port": cv["health"]["server"]["port"]}})
        host = {k: x for k, x in cv["host"].items() if x}
        r.equal(f"[{label}] {comp} host", cfg.get("host", {}), host)
        if seed:
            r.equal(f"[{label}] {comp} seedPeer", cfg.get("seedPeer"), dict(cv["seedPeer"], enable=True))
        else:
            r.check(f"[{label}] {comp} is not a seed peer", not cfg.get("seedPeer", {}).get("enable"))

        proxy = cfg["proxy"]
        ps = cv["proxy"]["server"]
        r.equal(f"[{label}] {comp} proxy port", proxy["server"]["port"], ps["port"])
        r.equal(f"[{label}] {comp} proxy requestRateLimit", proxy["server"]["requestRateLimit"], ps["requestRateLimit"])
        if ps["basicAuth"]["username"]:
            r.equal(f"[{label}] {comp} proxy basicAuth", proxy["server"].get("basicAuth"), ps["basicAuth"])
        else:
            r.check(f"[{label}] {comp} proxy without basicAuth", "basicAuth" not in proxy["server"])
        r.equal(f"[{label}] {comp} proxy rules", proxy["rules"], cv["proxy"]["rules"])
        registries = v["registries"]
        mirror = proxy["registryMirror"]
        r.equal(f"[{label}] {comp} registryMirror.addr = first registry's server",
                mirror["addr"], registries[0]["server"].rstrip("/"))
        mappings = mirror.get("registries", [])
        r.equal(f"[{label}] {comp} registryMirror maps each registry", len(mappings), len(registries))
        for reg, m in zip(registries, mappings):
            server = urlparse(reg["server"])
            regex = re.compile(m["regx"])
            decoy = reg["host"].replace(".", "x", 1) if "." in reg["host"] else reg["host"] + "x"
            r.check(f"[{label}] {comp} mirror regx {m['regx']} matches {reg['host']} only",
                    regex.search(reg["host"]) is not None and regex.search(decoy) is None
                    and regex.search("a" + reg["host"]) is None and regex.search(reg["host"] + "/x") is None)
            r.equal(f"[{label}] {comp} mirror {reg['host']} upstream",
                    (m["schema"], m["host"]), (server.scheme, server.netloc))

    def dfdaemon_ports(self, label, cfg, c):
        """Host ports (hostPort = containerPort) follow dfdaemon.yaml; QUIC is the UDP one."""
        r = self.r
        want_ports = {
            "grpc-upload": cfg["upload"]["server"]["port"],
            "http-proxy": cfg["proxy"]["server"]["port"],
            "http-metrics": cfg["metrics"]["server"]["port"],
            "http-health": cfg["health"]["server"]["port"],
            "tcp-piece": cfg["storage"]["server"]["tcpPort"],
            "quic-piece": cfg["storage"]["server"]["quicPort"],
        }
        got_ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        r.equal(f"[{label}] dfdaemon ports follow dfdaemon.yaml", got_ports, want_ports)
        r.equal(f"[{label}] dfdaemon QUIC port is UDP, the rest TCP",
                {p["name"]: p.get("protocol", "TCP") for p in c["ports"]},
                {n: "UDP" if n == "quic-piece" else "TCP" for n in want_ports})
        r.check(f"[{label}] dfdaemon hostPort = containerPort",
                all(p.get("hostPort") == p["containerPort"] for p in c["ports"]))

    def peer_tls(self, label, comp, cfg, tls):
        """Every TLS triple of a peer (scheduler link, upload server, upload client) names the
        mounted files, or none is set."""
        triples = {
            "scheduler": {k: cfg["scheduler"][k] for k in TLS_KEYS & set(cfg["scheduler"])},
            "upload.server": {k: cfg["upload"]["server"][k] for k in TLS_KEYS & set(cfg["upload"]["server"])},
            "upload.client": cfg["upload"].get("client", {}),
        }
        want = TLS_TRIPLE if tls_source(tls) else {}
        for where, got in triples.items():
            self.r.equal(f"[{label}] {comp} {where} TLS {'= mounted files' if want else 'unset'}", got, want)

    def dfdaemon(self, label, render):
        r = self.r
        v = render.values
        dv = v["dfdaemon"]
        name = f"{expected_fullname(render.release, v)}-dfdaemon"
        ds = render.get("DaemonSet", name)
        if not dv["enable"]:
            r.check(f"[{label}] dfdaemon disabled: no DaemonSet", ds is None)
            return
        if not r.check(f"[{label}] DaemonSet {name}", ds is not None):
            return
        spec = pod_spec(ds)
        r.equal(f"[{label}] dfdaemon hostNetwork", spec.get("hostNetwork"), True)
        r.equal(f"[{label}] dfdaemon dnsPolicy", spec.get("dnsPolicy"), "ClusterFirstWithHostNet")
        ru = ds["spec"]["updateStrategy"]
        r.check(f"[{label}] dfdaemon rolling update maxUnavailable={dv['maxUnavailable']} maxSurge=0",
                ru["type"] == "RollingUpdate" and ru["rollingUpdate"]["maxUnavailable"] == dv["maxUnavailable"]
                and ru["rollingUpdate"]["maxSurge"] == 0, str(ru))
        c = container(ds, "dfdaemon")
        args = c["args"]
        r.equal(f"[{label}] dfdaemon command", c["command"], ["dfdaemon"])
        r.equal(f"[{label}] dfdaemon --config", arg_value(args, "--config"), f"{CONFIG_DIR}/dfdaemon.yaml")
        r.equal(f"[{label}] dfdaemon --dynconfig", arg_value(args, "--dynconfig"), f"{CONFIG_DIR}/dynconfig.yaml")
        r.equal(f"[{label}] dfdaemon --ip", arg_value(args, "--ip"), "$(HOST_IP)")
        r.equal(f"[{label}] dfdaemon --hostname", arg_value(args, "--hostname"), "$(NODE_NAME)")
        r.check(f"[{label}] dfdaemon --console, not --seed-peer", "--console" in args and "--seed-peer" not in args)
        r.equal(f"[{label}] dfdaemon --log-level", arg_value(args, "--log-level"), dv["logLevel"])
        r.equal(f"[{label}] HOST_IP from status.hostIP", env_field(c, "HOST_IP"), "status.hostIP")
        r.equal(f"[{label}] NODE_NAME from spec.nodeName", env_field(c, "NODE_NAME"), "spec.nodeName")
        r.equal(f"[{label}] dfdaemon image", c["image"], image_ref(v, dv["image"], self.app_version))
        r.check(f"[{label}] dfdaemon runs as root", not spec.get("securityContext", {}).get("runAsNonRoot")
                and not c.get("securityContext", {}).get("runAsNonRoot"))

        cfg = render.config_file(name, "dfdaemon.yaml")
        if not r.check(f"[{label}] dfdaemon.yaml rendered", isinstance(cfg, dict)):
            return
        self.peer_config(label, "dfdaemon", cfg, dv["config"], dv["cache"]["size"], False, v, dv["tls"])
        self.tls_mount(label, "dfdaemon", ds, c, dv["tls"], 0o400)

        # Probes on the health port of the rendered config; hostPort = containerPort.
        health = cfg["health"]["server"]["port"]
        for probe in ("livenessProbe", "readinessProbe"):
            get = c.get(probe, {}).get("httpGet", {})
            r.check(f"[{label}] dfdaemon {probe} GET /healthy on {health}",
                    get.get("path") == "/healthy" and get.get("port") == health, str(get))
        self.dfdaemon_ports(label, cfg, c)

        # The socket directory on the host, where dfget looks.
        sock_dir = os.path.dirname(cfg["download"]["server"]["socketPath"])
        m = mount(c, sock_dir)
        vol = volume(ds, m["name"]) if m else None
        r.check(f"[{label}] dfdaemon socket dir is hostPath {dv['socketDir']}",
                vol is not None and vol.get("hostPath", {}).get("path") == dv["socketDir"]
                and vol["hostPath"].get("type") == "DirectoryOrCreate", str(vol))
        if dv["socketDir"] == self.defaults["dfdaemon"]["socketDir"]:
            r.equal(f"[{label}] dfget's default socket dir on the host",
                    vol and vol["hostPath"]["path"], "/var/run/dragonfly")

        # The cache.
        m = mount(c, cfg["storage"]["dir"])
        vol = volume(ds, m["name"]) if m else None
        if dv["cache"]["type"] == "hostPath":
            r.check(f"[{label}] dfdaemon cache is hostPath {dv['cache']['hostPath']}",
                    vol is not None and vol.get("hostPath", {}).get("path") == dv["cache"]["hostPath"]
                    and vol["hostPath"].get("type") == "DirectoryOrCreate", str(vol))
        else:
            r.check(f"[{label}] dfdaemon cache is an emptyDir of {dv['cache']['size']}",
                    vol is not None and vol.get("emptyDir", {}).get("sizeLimit") == str(dv["cache"]["size"]), str(vol))

    def dfinit(self, label, render):
        r = self.r
        v = render.values
        dv = v["dfdaemon"]
        name = f"{expected_fullname(render.release, v)}-dfdaemon"
        ds = render.get("DaemonSet", name)
        if ds is None:
            return
        spec = pod_spec(ds)
        init = {c["name"]: c for c in spec.get("initContainers", [])}
        di = dv["dfinit"]
        if not di["enable"]:
            r.check(f"[{label}] dfinit disabled: no init containers", not init)
            return
        runtime = di["containerRuntime"]
        c = init.get("dfinit")
        if not r.check(f"[{label}] dfinit init container", c is not None):
            return
        r.equal(f"[{label}] dfinit command", c["command"], ["dfinit"])
        r.equal(f"[{label}] dfinit --config", arg_value(c["args"], "--config"), f"{CONFIG_DIR}/dfinit.yaml")
        r.equal(f"[{label}] dfinit uses the client image", c["image"], container(ds, "dfdaemon")["image"])
        cm = mount(c, CONFIG_DIR)
        r.check(f"[{label}] dfinit mounts the config", cm is not None
                and volume(ds, cm["name"]).get("configMap", {}).get("name") == name)
        host_dir = os.path.dirname(di[runtime]["configPath"])
        if di[runtime]["configPath"] == self.defaults["dfdaemon"]["dfinit"][runtime]["configPath"]:
            r.equal(f"[{label}] {runtime}: dfinit edits {RUNTIME_DIRS[runtime]}", host_dir, RUNTIME_DIRS[runtime])
        m = mount(c, host_dir)
        vol = volume(ds, m["name"]) if m else None
        r.check(f"[{label}] dfinit mounts host dir {host_dir} at the same path",
                vol is not None and vol.get("hostPath", {}).get("path") == host_dir, str(vol))
        other = [x for x in set(RUNTIME_DIRS.values()) - {host_dir} if mount(c, x)]
        r.check(f"[{label}] dfinit mounts no other runtime's directory", not other, str(other))

        cfg = render.config_file(name, "dfinit.yaml")
        if not r.check(f"[{label}] dfinit.yaml rendered", isinstance(cfg, dict)):
            return
        r.equal(f"[{label}] dfinit proxy.addr", cfg["proxy"]["addr"],
                f"http://127.0.0.1:{dv['config']['proxy']['server']['port']}")
        r.equal(f"[{label}] dfinit.yaml has only the {runtime} section", list(cfg["containerRuntime"]), [runtime])
        section = cfg["containerRuntime"][runtime]
        r.equal(f"[{label}] dfinit {runtime} configPath", section["configPath"], di[runtime]["configPath"])
        if di[runtime]["configPath"] == self.defaults["dfdaemon"]["dfinit"][runtime]["configPath"]:
            r.equal(f"[{label}] dfinit {runtime} default configPath", section["configPath"],
                    RUNTIME_CONFIG_FILES[runtime])
        regs = v["registries"]
        if runtime == "containerd":
            want = []
            for reg in regs:
                entry = {"hostNamespace": reg["host"], "serverAddr": reg["server"].rstrip("/"),
                         "capabilities": reg.get("capabilities") or ["pull", "resolve"]}
                if "skipVerify" in reg:
                    entry["skipVerify"] = reg["skipVerify"]
                want.append(entry)
            r.equal(f"[{label}] dfinit containerd registries = values.registries", section["registries"], want)
            r.equal(f"[{label}] dfinit containerd proxyAllRegistries", section["proxyAllRegistries"],
                    di["containerd"]["proxyAllRegistries"])
        elif runtime in ("crio", "podman"):
            r.equal(f"[{label}] dfinit {runtime} registries = values.registries", section["registries"],
                    [{"prefix": reg["host"], "location": reg["host"]} for reg in regs])
            r.equal(f"[{label}] dfinit {runtime} unqualifiedSearchRegistries",
                    section["unqualifiedSearchRegistries"], di[runtime]["unqualifiedSearchRegistries"])
        else:
            r.equal(f"[{label}] dfinit docker section is configPath only", sorted(section), ["configPath"])

        # The runtime restart.
        rv = di["restartContainerRuntime"]
        want_restart = rv["enable"] if rv["enable"] is not None else runtime in RESTARTED_BY_DEFAULT
        rc = init.get("restart-container-runtime")
        if want_restart:
            if r.check(f"[{label}] {runtime} restarted after dfinit", rc is not None):
                unit = rv["serviceName"] or f"{runtime}.service"
                r.equal(f"[{label}] restart command", rc["command"],
                        ["nsenter", "-t", "1", "-m", "--", "systemctl", "restart", unit])
                r.equal(f"[{label}] restart is privileged", rc.get("securityContext", {}).get("privileged"), True)
                r.equal(f"[{label}] restart image", rc["image"], image_ref(v, rv["image"], self.app_version))
                r.equal(f"[{label}] restart sees the node's PID 1 (hostPID)", spec.get("hostPID"), True)
                names = [x["name"] for x in spec["initContainers"]]
                r.check(f"[{label}] restart runs after dfinit", names.index("dfinit") < names.index(rc["name"]))
        else:
            r.check(f"[{label}] {runtime} not restarted, no hostPID", rc is None and not spec.get("hostPID"))
        r.check(f"[{label}] only the restart step is privileged",
                not any(x.get("securityContext", {}).get("privileged")
                        for x in spec["initContainers"] + spec["containers"] if x["name"] != "restart-container-runtime"))

    def seed_peer(self, label, render):
        r = self.r
        v = render.values
        sv = v["seedPeer"]
        name = f"{expected_fullname(render.release, v)}-seed-peer"
        sts = render.get("StatefulSet", name)
        if not sv["enable"]:
            r.check(f"[{label}] seed peers disabled: no StatefulSet", sts is None)
            return
        if not r.check(f"[{label}] StatefulSet {name}", sts is not None):
            return
        r.equal(f"[{label}] seed peer replicas", sts["spec"]["replicas"], sv["replicas"])
        svc = render.get("Service", sts["spec"]["serviceName"])
        r.check(f"[{label}] seed peer governing Service is headless",
                svc is not None and svc["spec"].get("clusterIP") == "None")
        c = container(sts, "seed-peer")
        args = c["args"]
        r.equal(f"[{label}] seed peer command", c["command"], ["dfdaemon"])
        r.check(f"[{label}] seed peer --seed-peer --console", "--seed-peer" in args and "--console" in args)
        r.equal(f"[{label}] seed peer --config", arg_value(args, "--config"), f"{CONFIG_DIR}/dfdaemon.yaml")
        r.equal(f"[{label}] seed peer --dynconfig", arg_value(args, "--dynconfig"), f"{CONFIG_DIR}/dynconfig.yaml")
        r.equal(f"[{label}] seed peer --ip", arg_value(args, "--ip"), "$(POD_IP)")
        r.equal(f"[{label}] seed peer --hostname", arg_value(args, "--hostname"), "$(POD_NAME)")
        r.equal(f"[{label}] POD_IP from status.podIP", env_field(c, "POD_IP"), "status.podIP")
        r.equal(f"[{label}] POD_NAME from metadata.name", env_field(c, "POD_NAME"), "metadata.name")
        r.check(f"[{label}] seed peer is not on the host network", not pod_spec(sts).get("hostNetwork"))

        cfg = render.config_file(name, "dfdaemon.yaml")
        if not r.check(f"[{label}] seed peer dfdaemon.yaml rendered", isinstance(cfg, dict)):
            return
        p = sv["persistence"]
        self.peer_config(label, "seed-peer", cfg, sv["config"], p["size"], True, v, sv["tls"])
        self.seed_quic_and_tls(label, cfg, sts, c, svc, sv["tls"])
        health = cfg["health"]["server"]["port"]
        for probe in ("livenessProbe", "readinessProbe"):
            get = c.get(probe, {}).get("httpGet", {})
            r.check(f"[{label}] seed peer {probe} GET /healthy on {health}",
                    get.get("path") == "/healthy" and get.get("port") == health, str(get))

        m = mount(c, STORAGE_DIR)
        claims = sts["spec"].get("volumeClaimTemplates", [])
        affinity = pod_spec(sts).get("affinity", {}).get("podAntiAffinity", {})
        if p["type"] == "pvc":
            claim = claims[0] if len(claims) == 1 else None
            want_class = p["storageClass"] or v["global"]["storageClass"] or None
            if want_class == "-":
                want_class = ""
            r.check(f"[{label}] seed peer storage is a {p['size']} volumeClaimTemplate",
                    m is not None and claim is not None and claim["metadata"]["name"] == m["name"]
                    and claim["spec"]["resources"]["requests"]["storage"] == str(p["size"])
                    and claim["spec"].get("storageClassName") == want_class, str(claim))
        elif p["type"] == "hostPath":
            vol = volume(sts, m["name"]) if m else None
            r.check(f"[{label}] seed peer storage is hostPath {p['hostPath']}, no claims",
                    not claims and vol is not None and vol.get("hostPath", {}).get("path") == p["hostPath"], str(vol))
            required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution", [])
            r.check(f"[{label}] hostPath seed peers: one per node (required anti-affinity)",
                    any(t.get("topologyKey") == "kubernetes.io/hostname" for t in required), str(affinity))
        else:
            vol = volume(sts, m["name"]) if m else None
            r.check(f"[{label}] seed peer storage is an emptyDir", not claims and vol and "emptyDir" in vol)

    def seed_quic_and_tls(self, label, cfg, sts, c, svc, tls):
        """The seed peer's QUIC port, UDP, in its container and its Service; its TLS files."""
        self.tls_mount(label, "seed peer", sts, c, tls, 0o400)
        quic = cfg["storage"]["server"]["quicPort"]
        self.r.check(f"[{label}] seed peer declares UDP {quic} (QUIC pieces)",
                     port_by_name(c, "quic-piece") == quic and port_protocol(c, "quic-piece") == "UDP", str(c["ports"]))
        sp = {q["name"]: q for q in svc["spec"]["ports"]} if svc else {}
        self.r.check(f"[{label}] seed peer Service has UDP {quic} (QUIC pieces)",
                     sp.get("quic-piece", {}).get("port") == quic and sp["quic-piece"].get("protocol") == "UDP",
                     str(sp))

    def tls_mount(self, label, comp, workload, c, tls, mode):
        """The component's TLS files are mounted read-only at TLS_DIR from the source its
        values name (a Secret with the given file mode, or the node's directory), or nothing."""
        r = self.r
        m = mount(c, TLS_DIR)
        source = tls_source(tls)
        if source is None:
            r.check(f"[{label}] {comp}: no TLS volume", m is None and volume(workload, "tls") is None)
            return
        vol = volume(workload, m["name"]) if m else None
        if not r.check(f"[{label}] {comp}: TLS files mounted read-only at {TLS_DIR}",
                       vol is not None and m.get("readOnly") is True, str(m)):
            return
        if source == "secret":
            r.equal(f"[{label}] {comp}: TLS from Secret {tls['secretName']}, mode {mode:o}", vol.get("secret"),
                    {"secretName": tls["secretName"], "defaultMode": mode})
        else:
            r.equal(f"[{label}] {comp}: TLS from the node's {tls['hostPath']}, which must exist", vol.get("hostPath"),
                    {"path": tls["hostPath"], "type": "Directory"})

    def metrics(self, label, render):
        r = self.r
        v = render.values
        fullname = expected_fullname(render.release, v)
        ports = {
            "scheduler": v["scheduler"]["config"]["metrics"]["port"],
            "seedPeer": v["seedPeer"]["config"]["metrics"]["server"]["port"],
            "dfdaemon": v["dfdaemon"]["config"]["metrics"]["server"]["port"],
        }
        components = {"scheduler": "scheduler", "seedPeer": "seed-peer", "dfdaemon": "dfdaemon"}
        for key, comp in components.items():
            cv = v[key]
            name = f"{fullname}-{comp}-metrics"
            svc = render.get("Service", name)
            sm = render.get("ServiceMonitor", name)
            if not (cv["enable"] and cv["metrics"]["enable"]):
                r.check(f"[{label}] {comp}: no metrics Service or ServiceMonitor", svc is None and sm is None)
                continue
            if not r.check(f"[{label}] {comp}: metrics Service {name}", svc is not None):
                continue
            sp = svc["spec"]["ports"]
            r.check(f"[{label}] {comp}: metrics Service port http-metrics={ports[key]}",
                    len(sp) == 1 and sp[0]["name"] == "http-metrics" and sp[0]["port"] == ports[key], str(sp))
            smv = cv["metrics"]["serviceMonitor"]
            if not smv["enable"]:
                r.check(f"[{label}] {comp}: no ServiceMonitor", sm is None)
                continue
            if not r.check(f"[{label}] {comp}: ServiceMonitor {name}", sm is not None):
                continue
            r.equal(f"[{label}] {comp}: ServiceMonitor apiVersion", sm["apiVersion"], "monitoring.coreos.com/v1")
            sel = sm["spec"]["selector"]["matchLabels"]
            selected = [s["metadata"]["name"] for s in render.of_kind("Service")
                        if all(s["metadata"]["labels"].get(k) == x for k, x in sel.items())]
            r.equal(f"[{label}] {comp}: ServiceMonitor selects only the metrics Service", selected, [name])
            r.equal(f"[{label}] {comp}: ServiceMonitor namespace", sm["spec"]["namespaceSelector"]["matchNames"],
                    [render.namespace])
            ep = sm["spec"]["endpoints"]
            r.check(f"[{label}] {comp}: ServiceMonitor scrapes http-metrics /metrics every {smv['interval']}",
                    len(ep) == 1 and ep[0]["port"] == "http-metrics" and ep[0].get("path") == "/metrics"
                    and ep[0]["interval"] == smv["interval"] and ep[0]["scrapeTimeout"] == smv["scrapeTimeout"],
                    str(ep))
            r.check(f"[{label}] {comp}: ServiceMonitor labels include additionalLabels",
                    all(sm["metadata"]["labels"].get(k) == x for k, x in smv["additionalLabels"].items()))

    def global_settings(self, label, render):
        r = self.r
        g = render.values["global"]
        for w in [d for d in render.docs if d["kind"] in WORKLOAD_KINDS]:
            what = f"{w['kind']}/{w['metadata']['name']}"
            key = {"scheduler": "scheduler", "seed-peer": "seedPeer", "dfdaemon": "dfdaemon"}[
                w["metadata"]["labels"]["app.kubernetes.io/component"]]
            cv = render.values[key]
            spec = pod_spec(w)
            want_secrets = [s if isinstance(s, str) else s["name"]
                            for s in (g["imagePullSecrets"] or []) + (cv["imagePullSecrets"] or [])]
            r.equal(f"[{label}] {what}: imagePullSecrets",
                    [s["name"] for s in spec.get("imagePullSecrets", [])], want_secrets)
            r.equal(f"[{label}] {what}: nodeSelector", spec.get("nodeSelector", {}),
                    cv["nodeSelector"] or g["nodeSelector"] or {})
            r.equal(f"[{label}] {what}: tolerations", spec.get("tolerations", []), cv["tolerations"])
            if cv["priorityClassName"]:
                r.equal(f"[{label}] {what}: priorityClassName", spec.get("priorityClassName"), cv["priorityClassName"])
            annotations = w["spec"]["template"]["metadata"]["annotations"]
            r.check(f"[{label}] {what}: podAnnotations",
                    all(annotations.get(k) == x for k, x in cv["podAnnotations"].items()))
            main = spec["containers"][0]
            for e in cv["extraEnv"]:
                r.check(f"[{label}] {what}: extraEnv {e['name']}", e in main.get("env", []))
            for vm in cv["extraVolumeMounts"]:
                r.check(f"[{label}] {what}: extraVolumeMount {vm['name']}",
                        vm in main.get("volumeMounts", []) and volume(w, vm["name"]) is not None)
            r.check(f"[{label}] {what}: extraArgs last", not cv["extraArgs"]
                    or main["args"][-len(cv["extraArgs"]):] == [str(a) for a in cv["extraArgs"]])

    # ---- across renders ------------------------------------------------------------------

    def checksums(self):
        """checksum/config follows the files each pod reads at start, and nothing else."""
        r = self.r

        def sums(sets=(), set_json=()):
            rc, out, err = self.helm.template(sets=sets, set_json=set_json)
            if rc != 0:
                r.check(f"[checksum] render with {sets or set_json}", False, err.strip()[-1000:])
                return None
            docs = load_docs(out)
            return {d["metadata"]["labels"]["app.kubernetes.io/component"]:
                    d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                    for d in docs if d["kind"] in WORKLOAD_KINDS}, docs

        base = sums()
        if base is None:
            return
        base, base_docs = base
        cases = [
            (["dfdaemon.config.upload.bandwidthLimit=1GB"], (), {"dfdaemon"}),
            (["dfdaemon.config.proxy.server.requestRateLimit=10"], (), {"dfdaemon"}),
            (["dfdaemon.dfinit.containerd.proxyAllRegistries=false"], (), {"dfdaemon"}),
            (["dfdaemon.cache.size=80Gi"], (), {"dfdaemon"}),
            (["seedPeer.config.download.concurrentPieceCount=32"], (), {"seed-peer"}),
            (["scheduler.config.scheduler.retryLimit=9"], (), {"scheduler"}),
            ([], ['registries=[{"host":"docker.io","server":"https://index.docker.io"},'
                  '{"host":"ghcr.io","server":"https://ghcr.io"}]'], {"dfdaemon", "seed-peer"}),
            (["dfdaemon.logLevel=debug"], (), set()),
            (["dfdaemon.config.download.protocol=quic"], (), {"dfdaemon"}),
            (["seedPeer.config.storage.server.quicPort=4106"], (), {"seed-peer"}),
            # TLS changes the config files, so every pod rolls onto its certificate.
            (["scheduler.tls.secretName=s-tls", "seedPeer.tls.secretName=p-tls", "dfdaemon.tls.hostPath=/etc/pki"],
             (), {"scheduler", "seed-peer", "dfdaemon"}),
            # dynconfig.yaml is re-read in place by running daemons: no rollout for it.
            (["clusterDomain=cluster.example"], (), set()),
        ]
        for sets, set_json, changed in cases:
            got = sums(sets, set_json)
            if got is None:
                continue
            got, _ = got
            what = ", ".join(list(sets) + list(set_json))
            r.equal(f"[checksum] {what[:70]}: pods that roll", {k for k in base if got.get(k) != base[k]}, changed)

        # The domain change did reach the dynconfig the daemons read.
        rc, out, _ = self.helm.template(sets=["clusterDomain=cluster.example"])
        docs = load_docs(out) if rc == 0 else []
        cm = next((d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "edge-damselfly-dfdaemon"), None)
        r.equal("[checksum] clusterDomain change reaches dynconfig.yaml",
                cm and yaml.safe_load(cm["data"]["dynconfig.yaml"]),
                {"scheduler": {"addr": "edge-damselfly-scheduler.p2p.svc.cluster.example:8002"}})
        # Rendering is deterministic.
        again = sums()
        r.check("[checksum] same values, same checksums", again is not None and again[0] == base)

    def naming(self):
        r = self.r
        cases = [
            ("damselfly", [], "damselfly"),
            ("damselfly-prod", [], "damselfly-prod"),
            ("edge", [], "edge-damselfly"),
            ("edge", ["fullnameOverride=p2p"], "p2p"),
            ("edge", ["nameOverride=mirror"], "edge-mirror"),
            # Helm allows 53 characters; the fullname keeps 40.
            ("a-very-long-release-name-for-the-image-mirror-team-x", [],
             "a-very-long-release-name-for-the-image-m"),
        ]
        for release, sets, fullname in cases:
            rc, out, err = self.helm.template(release=release, sets=sets)
            if not r.check(f"[naming] {release} {sets}: renders", rc == 0, err.strip()[-500:]):
                continue
            docs = load_docs(out)
            names = {d["metadata"]["name"] for d in docs}
            want = {f"{fullname}-scheduler", f"{fullname}-seed-peer", f"{fullname}-dfdaemon"}
            r.check(f"[naming] {release} {sets}: fullname {fullname}", want <= names, str(sorted(names)))
            r.check(f"[naming] {release} {sets}: names are DNS labels",
                    all(re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", n) for n in names), str(sorted(names)))

    def variants(self):
        """Single switches no value set file covers: each rendered, schema-checked, looked at."""
        r = self.r
        cases = {
            "seed peers on emptyDir": (["seedPeer.persistence.type=emptyDir"],
                                       lambda R: self.seed_peer("variant", R)),
            "storageClass '-' means no class": (["seedPeer.persistence.storageClass=-"],
                                                lambda R: self.seed_peer("variant", R)),
            "dfinit off": (["dfdaemon.dfinit.enable=false"], lambda R: self.dfinit("variant", R)),
            "TLS from Secrets for all three": (["scheduler.tls.secretName=s-tls", "seedPeer.tls.secretName=p-tls",
                                                "dfdaemon.tls.secretName=d-tls"],
                                               lambda R: (self.scheduler("variant", R), self.seed_peer("variant", R),
                                                          self.dfdaemon("variant", R))),
            "TLS for the peers of an external scheduler": (
                ["scheduler.enable=false", "externalScheduler.addr=sched.example:8002",
                 "seedPeer.tls.secretName=p-tls", "dfdaemon.tls.hostPath=/etc/pki"],
                lambda R: (self.seed_peer("variant", R), self.dfdaemon("variant", R))),
            "only the daemons": (["scheduler.enable=false", "seedPeer.enable=false",
                                  "externalScheduler.addr=damselfly-scheduler.p2p.svc.cluster.local:8002"],
                                 lambda R: (self.dynconfig("variant", R), self.scheduler("variant", R))),
        }
        for what, (sets, check) in cases.items():
            rc, out, err = self.helm.template(sets=sets)
            if not r.check(f"[variant] {what}: renders", rc == 0, err.strip()[-500:]):
                continue
            overrides = {}
            for s in sets:
                key, _, value = s.partition("=")
                node = overrides
                *parents, leaf = key.split(".")
                for part in parents:
                    node = node.setdefault(part, {})
                node[leaf] = yaml.safe_load(value) if value not in ("-",) else value
            render = Render(load_docs(out), "edge", "p2p", deep_merge(self.defaults, overrides))
            self.schema_validate(f"variant {what}", render.docs)
            check(render)

    def package(self):
        """`helm package` makes an archive with the schema, the README and the NOTES."""
        r = self.r
        out_dir = tempfile.mkdtemp(prefix="damselfly-package-")
        try:
            rc, out, err = self.helm.run("package", self.chart_dir, "--destination", out_dir)
            archive = os.path.join(out_dir, f"damselfly-{self.chart_meta['version']}.tgz")
            if not r.check("[package] helm package", rc == 0 and os.path.exists(archive), err.strip()[-500:]):
                return
            with tarfile.open(archive) as t:
                names = set(t.getnames())
            for want in ("values.schema.json", "README.md", "templates/NOTES.txt", "values.yaml"):
                r.check(f"[package] archive has {want}", f"damselfly/{want}" in names)
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)

    def refusals(self):
        """Values the chart must refuse, with a message that says why."""
        r = self.r
        cases = [
            (["scheduler.enable=false"], (), "no scheduler"),
            ([], ['externalScheduler.addrs=["10.0.0.1:8002"]'], "scheduler.enable is true"),
            (["scheduler.enable=false"], ['externalScheduler.addrs=["scheduler:8002"]'], "externalScheduler/addrs/0"),
            (["scheduler.enable=false", "externalScheduler.addr=s:8002"], ['externalScheduler.addrs=["10.0.0.1:8002"]'],
             "not both"),
            ([], ["registries=[]"], "registries"),
            ([], ['registries=[{"host":"docker.io","server":"https://index.docker.io"},'
                  '{"host":"docker.io","server":"https://mirror.gcr.io"}]'], "listed twice"),
            ([], ['registries=[{"host":"docker.io","server":"index.docker.io"}]'], "registries/0/server"),
            (["scheduler.config.scheduler.parentGraph=tree"], (), "parentGraph"),
            (["scheduler.config.scheduler.meshParentLimit=2"], (), "meshParentLimit"),
            (["scheduler.config.scheduler.filterParentLimit=2"], (), "filterParentLimit"),
            (["scheduler.config.scheduler.algorithm=ml"], (), "algorithm"),
            (["scheduler.config.metrics.port=8002"], (), "must differ"),
            (["dfdaemon.dfinit.containerRuntime=rkt"], (), "containerRuntime"),
            (["schedulers.replicas=5"], (), "schedulers"),
            (["dfdaemon.config.upload.bandwithLimit=1GB"], (), "bandwithLimit"),
            (["dfdaemon.config.upload.bandwidthLimit=fast"], (), "bandwidthLimit"),
            (["dfdaemon.config.download.pieceTimeout=soon"], (), "pieceTimeout"),
            (["dfdaemon.config.health.server.port=4002"], (), "used twice"),
            (["dfdaemon.config.gc.policy.diskLowThresholdPercent=90"], (), "diskLowThresholdPercent"),
            (["dfdaemon.config.proxy.server.basicAuth.username=u"], (), "needs a password"),
            (["seedPeer.persistence.size=0"], (), "more than 0"),
            (["dfdaemon.metrics.serviceMonitor.enable=true"], (), "needs dfdaemon.metrics.enable"),
            (["dfdaemon.maxUnavailable=lots"], (), "maxUnavailable"),
            (["scheduler.image.pullPolicy=Sometimes"], (), "pullPolicy"),
            (["scheduler.logLevel=verbose"], (), "logLevel"),
            # QUIC and TLS values.
            (["dfdaemon.config.download.protocol=udp"], (), "protocol"),
            (["seedPeer.config.storage.server.quicPort=0"], (), "quicPort"),
            (["dfdaemon.config.download.quic.allowUnverifiedPeers=maybe"], (), "allowUnverifiedPeers"),
            (["seedPeer.tls.hostPath=/etc/pki"], (), "hostPath"),
            (["dfdaemon.tls.hostPath=etc/pki"], (), "hostPath"),
            (["scheduler.tls.secretName=Scheduler_TLS"], (), "secretName"),
            (["scheduler.tls.secretName=s-tls", "seedPeer.tls.secretName=p-tls", "dfdaemon.tls.secretName=d-tls", "dfdaemon.tls.hostPath=/etc/pki"], (), "not both"),
            (["dfdaemon.tls.hostPath=/etc/pki"], (), "TLS is set for dfdaemon but not for scheduler, seedPeer"),
            (["scheduler.tls.secretName=s-tls", "dfdaemon.tls.hostPath=/etc/pki"], (),
             "TLS is set for scheduler, dfdaemon but not for seedPeer"),
            (["scheduler.tls.secretName=s-tls", "seedPeer.tls.secretName=p-tls", "dfdaemon.tls.hostPath=/etc/pki", "scheduler.podSecurityContext.fsGroup=null"], (),
             "needs scheduler.podSecurityContext.fsGroup"),
        ]
        for sets, set_json, needle in cases:
            rc, out, err = self.helm.template(sets=sets, set_json=set_json)
            what = ", ".join(list(sets) + list(set_json))
            r.check(f"[refuse] {what[:90]}", rc != 0 and needle in err,
                    f"rc={rc}, wanted {needle!r} in: {err.strip()[-600:]}")

    def validator_bites(self, render):
        """The schema check is not vacuous: broken objects from a real render are rejected."""
        r = self.r
        ds = next(d for d in render.docs if d["kind"] == "DaemonSet")
        version = self.k8s_versions[0]
        broken = {
            "hostNetwork as a string": lambda d: pod_spec(d).__setitem__("hostNetwork", "yes"),
            "unknown pod field": lambda d: pod_spec(d).__setitem__("hostNetworking", True),
            "probe port as a list": lambda d: d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
            ["httpGet"].__setitem__("port", [4003]),
        }
        for what, breaker in broken.items():
            doc = copy.deepcopy(ds)
            breaker(doc)
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                rejected = False
            except kubernetes_validate.ValidationError:
                rejected = True
            r.check(f"[validator] rejects a DaemonSet with {what}", rejected)


# A warning or error in the programs' logs: tracing's level column, dfinit's prefixes, or the
# error a program prints as it stops. The last one matters for dfscheduler: when its gRPC
# server fails to start (e.g. unreadable TLS files) it keeps serving /metrics and /healthy
# until it is stopped, and only then prints the error.
LOG_PROBLEM = re.compile(r"(^|\s)(WARN|ERROR)\s|dfinit: (warning|error):|^Error: ", re.MULTILINE)


class BinaryChecks:
    """The rendered files, fed to the real programs (dfscheduler, dfdaemon, dfinit) when they
    are built: each must accept its file without a warning, as it would in the pod.

    Each runs with the command line of its container as rendered ($(VAR)s substituted), so
    the flags the templates pass must exist too:
      dfscheduler ...: runs for a moment in an empty network namespace
      dfdaemon ... --print-ca-cert: loads and validates its files, prints a CA, exits
      dfinit ... --dry-run: prints what it would write for the runtime

    Paths that would touch this machine (proxy CA, the runtime's config file) are moved into a
    temporary directory with --set. The binaries come from $DAMSELFLY_BIN_DIR, else
    <repo>/${CARGO_TARGET_DIR:-target}/debug, as .ci/run's cargo test leaves them.
    """

    NAMES = ("dfscheduler", "dfdaemon", "dfinit", "dfctl")
    # The certificate each component's TLS files stand for, issued by `dfctl cert issue`.
    ROLES = {"scheduler": "scheduler", "seed-peer": "seed-peer", "dfdaemon": "peer"}

    def __init__(self, helm, results, bin_dir, isolate):
        self.helm = helm
        self.r = results
        self.isolate = isolate
        self.bins = None
        self.why = ""
        self.seen = set()
        if bin_dir in ("", "none", "skip"):
            self.why = "DAMSELFLY_BIN_DIR=none"
            return
        paths = {n: os.path.join(bin_dir, n) for n in self.NAMES}
        missing = [p for p in paths.values() if not os.access(p, os.X_OK)]
        if missing:
            self.why = f"not built: {', '.join(missing)} (cargo build --bins, or set DAMSELFLY_BIN_DIR)"
        else:
            self.bins = paths

    def describe(self):
        if self.bins:
            return f"programs from {os.path.dirname(self.bins['dfdaemon'])}"
        return f"programs not checked ({self.why})"

    def run(self, cmd, timeout):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)
            return proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as e:
            return None, e.stdout or "", e.stderr or ""

    def value_set(self, label, path, release, namespace, values):
        if not self.bins:
            self.r.skip(f"[{label}] programs accept the rendered files", self.why)
            return
        work = tempfile.mkdtemp(prefix="damselfly-chart-bin-")
        try:
            self._value_set(label, path, release, namespace, values, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _value_set(self, label, path, release, namespace, values, work):
        r = self.r
        runtime = values["dfdaemon"]["dfinit"]["containerRuntime"]
        host = os.path.join(work, "host")
        config_paths = {
            "containerd": f"{host}/etc/containerd/config.toml",
            "crio": f"{host}/etc/containers/registries.conf",
            "podman": f"{host}/etc/containers/registries.conf",
            "docker": f"{host}/etc/docker/daemon.json",
        }
        for p in config_paths.values():
            os.makedirs(os.path.dirname(p), exist_ok=True)
        certs = f"{host}/etc/containerd/certs.d"
        with open(config_paths["containerd"], "w") as f:
            f.write(f'version = 2\n\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "{certs}"\n')
        sets = [f"dfdaemon.dfinit.{rt}.configPath={p}" for rt, p in config_paths.items()]
        for comp in ("dfdaemon", "seedPeer"):
            sets += [f"{comp}.config.proxy.server.caCert={work}/{comp}-ca/ca.crt",
                     f"{comp}.config.proxy.server.caKey={work}/{comp}-ca/ca.key"]
        rc, out, err = self.helm.template(release, namespace, [path] if path else [], sets)
        if not r.check(f"[{label}] render for the programs", rc == 0, err.strip()[-1000:]):
            return
        docs = load_docs(out)
        files = {}
        for d in docs:
            if d["kind"] == "ConfigMap":
                comp = d["metadata"]["labels"]["app.kubernetes.io/component"]
                for key, text in d["data"].items():
                    if TLS_DIR in text:
                        # The mounted Secret or node directory: real files of a test CA.
                        tls_dir = self.issue(work, comp)
                        if tls_dir is None:
                            return
                        text = text.replace(TLS_DIR, tls_dir)
                    dest = os.path.join(work, f"{comp}-{key}")
                    with open(dest, "w") as f:
                        f.write(text)
                    files[(comp, key)] = dest

        scheduler = self.command_line(docs, "Deployment", "scheduler", "scheduler", files)
        if scheduler:
            self.scheduler(label, scheduler, work)
        for kind, comp in (("DaemonSet", "dfdaemon"), ("StatefulSet", "seed-peer")):
            daemon = self.command_line(docs, kind, comp, comp, files)
            if daemon:
                self.daemon(label, comp, daemon)
        dfinit = self.command_line(docs, "DaemonSet", "dfinit", "dfdaemon", files, init=True)
        if dfinit:
            self.dfinit(label, runtime, dfinit, values, certs, config_paths[runtime])

    def issue(self, work, comp):
        """A directory with ca.crt, tls.crt and tls.key for comp, from one test CA per render:
        what the TLS Secret or the node's directory holds in the pod."""
        ca, out = os.path.join(work, "ca"), os.path.join(work, f"tls-{comp}")
        if os.path.isdir(out):
            return out
        name = self.POD_ENV["POD_NAME" if comp == "seed-peer" else "NODE_NAME"]
        for cmd in ([self.bins["dfctl"], "cert", "ca", "--out", ca] if not os.path.isdir(ca) else None,
                    [self.bins["dfctl"], "cert", "issue", "--ca", ca, "--name", name, "--ip", "127.0.0.1",
                     "--role", self.ROLES[comp], "--out", out]):
            if cmd is None:
                continue
            rc, out_text, err = self.run(cmd, 60)
            if not self.r.check(f"dfctl {' '.join(cmd[1:3])} for {comp}", rc == 0, f"rc={rc}: {err.strip()[-500:]}"):
                return None
        return out

    # What the kubelet would substitute for $(VAR) in the arguments.
    POD_ENV = {"HOST_IP": "127.0.0.1", "NODE_NAME": "chart-test-node",
               "POD_IP": "127.0.0.1", "POD_NAME": "chart-test-seed-0"}

    def command_line(self, docs, kind, name, comp, files, init=False):
        """The container's command and args as rendered, run here: the program from the build,
        $(VAR) substituted, files under the config dir replaced by the rendered ones."""
        for d in docs:
            if d["kind"] != kind or d["metadata"]["labels"]["app.kubernetes.io/component"] != comp:
                continue
            c = container(d, name, init)
            if c is None:
                return None
            program = c["command"][0]
            if program not in self.bins:
                self.r.check(f"{kind}/{name}: {program} is one of the built programs", False)
                return None
            args = []
            for a in c["command"][1:] + c.get("args", []):
                a = re.sub(r"\$\((\w+)\)", lambda m: self.POD_ENV[m.group(1)], str(a))
                if a.startswith(CONFIG_DIR + "/"):
                    a = files[(comp, a[len(CONFIG_DIR) + 1:])]
                args.append(a)
            return [self.bins[program]] + args
        return None

    def _once(self, cmd, work):
        """False when the same command on the same files already ran for another value set."""
        key = [os.path.basename(cmd[0])]
        for a in cmd[1:]:
            key.append(a.replace(work, "<work>"))
            if os.path.isfile(a):
                with open(a) as f:
                    key.append(f.read().replace(work, "<work>"))
        digest = hashlib.sha256("\0".join(key).encode()).hexdigest()
        if digest in self.seen:
            return False
        self.seen.add(digest)
        return True

    def scheduler(self, label, cmd, work):
        if not self._once(cmd, work):
            return
        name = f"[{label}] dfscheduler runs with the Deployment's arguments and scheduler.yaml"
        if not self.isolate:
            self.r.skip(name, "needs `unshare -n` (it binds its ports)")
            return
        rc, out, err = self.run(["unshare", "-n", "timeout", "-s", "TERM", "3"] + cmd, 20)
        # Still serving when `timeout` stopped it (124), and nothing to warn about.
        self.r.check(name, rc == 124 and not LOG_PROBLEM.search(err), f"rc={rc}: {err.strip()[-800:]}")

    def daemon(self, label, comp, cmd):
        rc, out, err = self.run(cmd + ["--print-ca-cert"], 60)
        self.r.check(f"[{label}] dfdaemon takes the {comp} arguments and dfdaemon.yaml",
                     rc == 0 and "BEGIN CERTIFICATE" in out and not LOG_PROBLEM.search(err),
                     f"rc={rc}: {err.strip()[-800:]}")

    def dfinit(self, label, runtime, cmd, values, certs, runtime_config):
        rc, out, err = self.run(cmd + ["--dry-run"], 60)
        ok = self.r.check(f"[{label}] dfinit takes its arguments and dfinit.yaml ({runtime})",
                          rc == 0 and not LOG_PROBLEM.search(err), f"rc={rc}: {(err + out).strip()[-800:]}")
        if not ok:
            return
        proxy = f"127.0.0.1:{values['dfdaemon']['config']['proxy']['server']['port']}"
        regs = values["registries"]
        if runtime == "containerd":
            want = [f"{certs}/{reg['host']}/hosts.toml" for reg in regs]
            want += [f'server = "{reg["server"].rstrip("/")}"' for reg in regs]
            want.append(f'[host."http://{proxy}"]')
            if values["dfdaemon"]["dfinit"]["containerd"]["proxyAllRegistries"]:
                want.append(f"{certs}/_default/hosts.toml")
        elif runtime in ("crio", "podman"):
            want = [runtime_config] + [f'prefix = "{reg["host"]}"' for reg in regs] + [f'location = "{proxy}"']
        else:
            want = [runtime_config, f"http://{proxy}"]
        missing = [w for w in want if w not in out]
        self.r.check(f"[{label}] dfinit would point {runtime} at the mirror for every registry",
                     not missing, f"missing {missing} in:\n{out[-1500:]}")


def parse_header(path):
    """`# test: release=X namespace=Y` in a values file."""
    release, namespace = "edge", "p2p"
    with open(path) as f:
        for line in f:
            m = re.match(r"#\s*test:\s*(.*)", line)
            if m:
                fields = dict(kv.split("=", 1) for kv in m.group(1).split())
                release = fields.get("release", release)
                namespace = fields.get("namespace", namespace)
    return release, namespace


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--helm", required=True)
    ap.add_argument("--chart", required=True)
    ap.add_argument("--values-dir", required=True)
    ap.add_argument("--min-kubernetes", default="1.25.0",
                    help="oldest Kubernetes to validate against (the chart's kubeVersion floor)")
    ap.add_argument("--bin-dir", default=os.environ.get("DAMSELFLY_BIN_DIR") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
        os.environ.get("CARGO_TARGET_DIR", "target"), "debug"),
        help="where dfscheduler, dfdaemon and dfinit are built ('none' to skip those checks)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()

    isolate = subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0 \
        if shutil.which("unshare") else False
    latest = kubernetes_validate.latest_version()
    versions = [latest] + ([args.min_kubernetes] if args.min_kubernetes != latest else [])
    helm = Helm(args.helm, args.chart, isolate)
    rc, out, _ = helm.run("version", "--short")
    print(f"helm {out.strip()}; kubernetes-validate {kubernetes_validate.__version__}, "
          f"schemas for Kubernetes {', '.join(versions)}; "
          f"helm {'in its own network namespace' if isolate else 'NOT network-isolated (unshare -n unavailable)'}")
    print("ServiceMonitor (a CRD) is left out of the schema check and checked structurally.")

    results = Results(args.verbose)
    tests = ChartTests(helm, results, args.chart, versions)
    programs = BinaryChecks(helm, results, os.path.normpath(args.bin_dir), isolate)
    print(f"rendered files fed to the {programs.describe()}")
    try:
        sets = [("default", None, "edge", "p2p")]
        for fname in sorted(os.listdir(args.values_dir)):
            if fname.startswith("values-") and fname.endswith(".yaml"):
                path = os.path.join(args.values_dir, fname)
                sets.append((fname[len("values-"):-len(".yaml")], path, *parse_header(path)))
        def guarded(name, fn, *fn_args):
            """A test that crashes counts as one failure; the others still run."""
            try:
                return fn(*fn_args)
            except Exception:
                results.check(f"{name} ran to the end", False, traceback.format_exc(limit=3))
                return None

        first = None
        for label, path, release, namespace in sets:
            before = results.failed
            render = guarded(f"[{label}]", tests.value_set, label, path, release, namespace)
            if render:
                guarded(f"[{label}] programs", programs.value_set, label, path, release, namespace,
                        render.values)
            first = first or render
            print(f"value set {label:<20} release={release:<15} namespace={namespace:<8} "
                  f"{'ok' if results.failed == before else 'FAILED'}")
        guarded("[checksum]", tests.checksums)
        guarded("[naming]", tests.naming)
        guarded("[variant]", tests.variants)
        guarded("[package]", tests.package)
        guarded("[refuse]", tests.refusals)
        if first:
            guarded("[validator]", tests.validator_bites, first)
    finally:
        helm.cleanup()
    summary = f"{results.passed} passed, {results.failed} failed"
    if results.skipped:
        summary += f", {results.skipped} skipped"
    print(summary)
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main())
