"""The Kubernetes manifests, checked offline: schemas (Kubernetes and Strimzi), hardening, and
agreement with the code (topics, settings, ports, probes). Nothing is hard-coded that the code
already says: topics come from the launcher's plan and the streams app, settings from Settings."""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
from pydantic import SecretStr

from dns_redirect.edge import HEALTH_PATH
from heatcache import contract
from heatcache.metrics import ALL_STAGES
from heatcache.services.kafka import kafka_version
from heatcache.settings import Settings, SettingsError, load_settings
from ops import k8s as gen
from ops.topics import all_topics, co_partitioned
from tests.k8s import strimzi_api
from tests.k8s.conftest import K8S, OVERLAYS

K8S_VERSION = "1.33.0"  # the Kubernetes release the built-in objects are validated against
STRIMZI_GROUP = "kafka.strimzi.io"
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}
SNIFFER = "heatcache-sniffer"
# what must come from Secrets: every SecretStr setting, and those that still are plain strings
SECRET_FIELDS = {n for n, f in Settings.model_fields.items() if f.annotation is SecretStr} | {
    "aria2_secret", "client_id_secret", "purge_token", "catalog_url"}
RUNNER_PATHS = ("/metrics", "/health")  # heatcache/runner.py serves both on HEATCACHE_METRICS_PORT
RUNNER_SPEC = {"sniff": "sniffer", "streams": "streams", "fetch": "fetcher", "dns": "dns", "edge": "edge"}
# stages whose shell is not on the runner yet (their owners are moving them): their probes will
# answer once they are; this list must shrink, a test fails when an entry is no longer true
NOT_YET_ON_RUNNER: set[str] = set()
Obj = dict[str, Any]


def of_kind(objs: list[Obj], *kinds: str) -> list[Obj]:
    return [o for o in objs if o["kind"] in kinds]


def named(objs: list[Obj], kind: str, name: str, namespace: str | None = None) -> Obj:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name
             and (namespace is None or o["metadata"].get("namespace") == namespace)]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(workload: Obj) -> Obj:
    return workload["spec"]["template"]["spec"]


def config_env(objs: list[Obj], container: Obj, namespace: str) -> dict[str, str]:
    """The plain (non-secret) HEATCACHE_* environment a container gets: ConfigMaps then env values."""
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        cm = named(objs, "ConfigMap", src["configMapRef"]["name"], namespace)
        env.update(cm.get("data", {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    return {k: v for k, v in env.items() if k.startswith("HEATCACHE_")}


def stage_settings(env: dict[str, str]) -> Settings:
    fields = {k.removeprefix("HEATCACHE_").lower(): v for k, v in env.items()}
    try:
        return load_settings(**fields)
    except SettingsError as exc:
        raise AssertionError(f"the manifests give settings the code rejects: {exc}") from None


def stage_containers(objs: list[Obj]) -> list[tuple[Obj, Obj, str]]:
    """(workload, container, stage) for every container that runs a heatcache stage."""
    out = []
    for w in of_kind(objs, *WORKLOADS):
        for c in pod_spec(w)["containers"]:
            cmd = [*c.get("command", []), *c.get("args", [])]
            stages = [a for a in cmd if a in ("sniff", "streams", "fetch", "dns", "edge")]
            if stages:
                out.append((w, c, stages[0]))
    return out


@pytest.mark.parametrize("overlay", [*OVERLAYS, "base"])
def test_builtin_objects_validate_against_kubernetes_schemas(rendered: dict[str, list[Obj]], overlay: str) -> None:
    builtin = [o for o in rendered[overlay] if not o["apiVersion"].startswith(STRIMZI_GROUP)]
    assert of_kind(builtin, "Deployment") and of_kind(builtin, "NetworkPolicy")
    errors = []
    for obj in builtin:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not errors, "\n".join(errors)


def test_strimzi_resources_validate_against_strimzi_api(rendered: dict[str, list[Obj]]) -> None:
    resources = [o for name in OVERLAYS for o in rendered[name] if o["apiVersion"].startswith(STRIMZI_GROUP)]
    assert {o["kind"] for o in resources} == {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"}
    code, report = strimzi_api.check(resources, gen.STRIMZI_API)
    assert code == 0, report
    assert report.count("ok ") == len(resources)


def test_strimzi_checker_reports_unknown_and_deprecated_fields() -> None:
    bad = [{"apiVersion": gen.STRIMZI_API, "kind": "KafkaTopic", "metadata": {"name": "t"},
            "spec": {"partitionz": 3}},
           {"apiVersion": gen.STRIMZI_API, "kind": "KafkaUser", "metadata": {"name": "u"},
            "spec": {"authorization": {"type": "simple", "acls": [
                {"resource": {"type": "topic", "name": "x"}, "operation": "Read"}]}}},
           {"apiVersion": "kafka.strimzi.io/v1beta2", "kind": "KafkaTopic", "metadata": {"name": "old"},
            "spec": {"partitions": 1}}]
    code, report = strimzi_api.check(bad, gen.STRIMZI_API)
    assert code == 1
    assert "partitionz" in report and "deprecated field" in report and "v1beta2" in report


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_is_kraft_on_the_pinned_version_with_tls_listeners(rendered: dict[str, list[Obj]],
                                                                 overlay: str) -> None:
    objs = rendered[overlay]
    kafka = named(objs, "Kafka", gen.CLUSTER)
    assert kafka["spec"]["kafka"]["version"] == kafka_version()  # the pom's Kafka, the same as local
    assert "zookeeper" not in kafka["spec"]
    pools = [p for p in of_kind(objs, "KafkaNodePool") if p["metadata"]["labels"]["strimzi.io/cluster"] == gen.CLUSTER]
    roles = {r for p in pools for r in p["spec"]["roles"]}
    assert roles == {"controller", "broker"}
    listeners = kafka["spec"]["kafka"]["listeners"]
    assert listeners and all(li["tls"] and li["authentication"]["type"] == "tls" for li in listeners)
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    # every stage's bootstrap is this cluster's TLS listener
    port = listeners[0]["port"]
    for cm in of_kind(objs, "ConfigMap"):
        if "HEATCACHE_KAFKA_BOOTSTRAP" in cm.get("data", {}):
            host, _, p = cm["data"]["HEATCACHE_KAFKA_BOOTSTRAP"].partition(":")
            assert host.startswith(f"{gen.CLUSTER}-kafka-bootstrap.") and int(p) == port
            assert cm["data"]["HEATCACHE_KAFKA_SECURITY_PROTOCOL"] == "SSL"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_topic_is_a_kafkatopic_as_the_launcher_creates_it(rendered: dict[str, list[Obj]],
                                                                overlay: str) -> None:
    objs = rendered[overlay]
    common = named(objs, "ConfigMap", "heatcache-common")["data"]
    settings = stage_settings({k: v for k, v in common.items() if k.startswith("HEATCACHE_")})
    expected = {t.name: t for t in all_topics(settings)}
    assert {settings.topic(n) for n in contract.ALL_TOPICS} <= set(expected)
    topics = {t["spec"]["topicName"]: t["spec"] for t in of_kind(objs, "KafkaTopic")}
    assert set(topics) == set(expected), "regenerate with `python -m ops.k8s`"
    for name, plan in expected.items():
        spec = topics[name]
        assert spec["partitions"] == plan.partitions, name
        assert spec["config"]["cleanup.policy"] == plan.config.get("cleanup.policy", "delete"), name
        assert spec["replicas"] >= spec["config"]["min.insync.replicas"], name
    assert topics[settings.topic(contract.CACHE_EVENTS)]["config"]["cleanup.policy"] == "compact"
    copart = {topics[n]["partitions"] for n in co_partitioned(settings)}
    assert copart == {settings.kafka_partitions}
    # the sniffer (own namespace, own ConfigMap) batches by the same partition count
    sniffer_cm = named(objs, "ConfigMap", SNIFFER, "heatcache-capture")["data"]
    assert int(sniffer_cm["HEATCACHE_KAFKA_PARTITIONS"]) == settings.kafka_partitions


def test_generated_topic_files_are_current() -> None:
    for path, text in gen.targets().items():
        assert path.read_text() == text, f"{path} is stale: run `python -m ops.k8s`"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_is_hardened(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    pdbs = of_kind(objs, "PodDisruptionBudget")
    policies = of_kind(objs, "NetworkPolicy")
    accounts = {(o["metadata"]["name"], o["metadata"].get("namespace")) for o in of_kind(objs, "ServiceAccount")}
    for w in of_kind(objs, *WORKLOADS):
        name, ns = w["metadata"]["name"], w["metadata"].get("namespace")
        spec = pod_spec(w)
        labels = w["spec"]["template"]["metadata"]["labels"]
        sniffer = name == SNIFFER
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"].get("runAsUser", 1) != 0, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, name
        assert (spec["serviceAccountName"], ns) in accounts, name
        assert bool(spec.get("hostNetwork")) == sniffer, f"{name}: only the sniffer has host networking"
        assert not spec.get("hostPID") and not spec.get("hostIPC"), name
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            where = f"{name}/{c['name']}"
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert "ALL" in sc["capabilities"]["drop"], where
            added = set(sc["capabilities"].get("add", []))
            assert added <= ({"NET_RAW", "NET_ADMIN"} if sniffer else {"NET_BIND_SERVICE"}), where
            assert sc.get("privileged") is not True, where
            assert sc.get("runAsUser", 1) != 0, where
            # file capabilities need exec privilege; nothing else may have it
            assert sc["allowPrivilegeEscalation"] is (sniffer and bool(added)), where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{where} {kind}"
        for c in spec["containers"]:
            assert "livenessProbe" in c and "readinessProbe" in c, f"{name}/{c['name']} needs probes"
        assert any(p["metadata"].get("namespace") == ns and labels_match(p["spec"]["selector"], labels)
                   for p in pdbs), f"{name} has no PodDisruptionBudget"
        assert any(p["metadata"].get("namespace") == ns and p["spec"]["podSelector"] == {}
                   and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} for p in policies), \
            f"{name}'s namespace has no default-deny NetworkPolicy"
    # only the sniffer's namespace may run privileged pods; the pipeline's is restricted
    for namespace in of_kind(objs, "Namespace"):
        level = namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
        assert level == ("privileged" if namespace["metadata"]["name"] == "heatcache-capture" else "restricted")


def labels_match(selector: Obj, labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_come_from_secrets(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    secret_env = {f"HEATCACHE_{f.upper()}" for f in SECRET_FIELDS}
    for cm in of_kind(objs, "ConfigMap"):
        leaked = secret_env & set(cm.get("data", {}))
        assert not leaked and not any("PASSWORD" in k for k in cm.get("data", {})), cm["metadata"]["name"]
    for _w, c, stage in stage_containers(objs):
        for item in c.get("env", []):
            if item["name"] in secret_env:
                assert "secretKeyRef" in item.get("valueFrom", {}), f"{stage}: {item['name']}"
    assert not of_kind(objs, "Secret"), "Secrets are created by the operator, never shipped"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_env_ports_and_probes_match_the_code(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    seen = set()
    fields = {f"HEATCACHE_{f.upper()}" for f in Settings.model_fields}
    for cm in of_kind(objs, "ConfigMap"):
        unknown = {k for k in cm.get("data", {}) if k.startswith("HEATCACHE_")} - fields
        assert not unknown, f"ConfigMap {cm['metadata']['name']} sets variables no code reads: {unknown}"
    for w, c, stage in stage_containers(objs):
        seen.add(stage)
        ns = w["metadata"].get("namespace")
        names = {e["name"] for e in c.get("env", [])}
        assert not {n for n in names if n.startswith("HEATCACHE_")} - fields, f"{stage}: unknown variables"
        s = stage_settings(config_env(objs, c, ns))
        ports = {(p["containerPort"], p.get("protocol", "TCP")): p["name"] for p in c.get("ports", [])}
        serves: set[tuple[int, str]] = set()
        if s.metrics_port:
            serves.add((s.metrics_port, "TCP"))
        if stage == "dns":
            serves |= {(s.dns_port, "UDP"), (s.dns_port, "TCP")}
            assert s.dns_host == "0.0.0.0"
            # the DNS checks the edge's health through a Service that reaches the edge's port
            url = urlsplit(s.health_url)
            assert url.path == HEALTH_PATH
            svc = named(objs, "Service", url.hostname.split(".")[0] if url.hostname else "")
            assert any(p["port"] == url.port for p in svc["spec"]["ports"])
            # the probe clients are allowed by the server's own client-network check
            assert any(ipaddress.ip_address("127.0.0.1") in ipaddress.ip_network(n) for n in s.dns_client_networks)
        if stage == "edge":
            serves.add((s.edge_port, "TCP"))
            serves |= {(p, "TCP") for p in s.edge_tls_ports}
            assert s.edge_host == "0.0.0.0"
        assert set(ports) == serves, f"{stage}: container ports {set(ports)} but the stage serves {serves}"
        # non-root without NET_BIND_SERVICE: nothing binds below 1024 (Services map 53, 80, 443)
        assert all(p >= 1024 for p, _ in serves), f"{stage} binds a privileged port: {serves}"
        for probe_kind in ("readinessProbe", "livenessProbe"):
            probe = c[probe_kind]
            target = probe.get("httpGet") or probe.get("tcpSocket")
            if target is not None:
                assert target["port"] in ports.values() or (target["port"], "TCP") in ports, f"{stage} {probe_kind}"
            if "httpGet" in probe:
                path = probe["httpGet"]["path"]
                port = next(p for (p, _), n in ports.items() if n == probe["httpGet"]["port"])
                if stage == "edge":
                    assert (path, port) == (HEALTH_PATH, s.edge_port), f"{stage} {probe_kind}"
                else:  # the runner's /metrics (alive) and /health (ok, or degraded: not ready)
                    assert path in RUNNER_PATHS and port == s.metrics_port, f"{stage} {probe_kind} {path}"
                    assert RUNNER_SPEC[stage] in ALL_STAGES or stage in NOT_YET_ON_RUNNER, \
                        f"{stage} is probed on the runner's port but declares no metrics"
            if "exec" in probe:
                assert probe["exec"]["command"][:3] == ["python", "-m", "heatcache.probe"]
        # the edge's external address is what steered names resolve to
        if stage == "edge":
            edge_svc = [svc for svc in of_kind(objs, "Service") if svc["spec"].get("type") == "LoadBalancer"
                        and any(p["port"] == 80 for p in svc["spec"]["ports"])]
            assert len(edge_svc) == 1
            # clients reach HTTP on 80 and TLS on 443 of the node's address, and HTTP on every
            # other port the edge reports serving (its port, the sniffed ones: issue 18)
            http = {80, s.edge_port, *s.sniff_ports}
            assert {(p["port"], p["targetPort"]) for p in edge_svc[0]["spec"]["ports"]} == {
                *((c, ports[(s.edge_port, "TCP")]) for c in http),
                *((443, ports[(p, "TCP")]) for p in s.edge_tls_ports)}
            assert edge_svc[0]["metadata"]["annotations"]["metallb.io/loadBalancerIPs"] == s.node_address
    assert seen == {"sniff", "streams", "fetch", "dns", "edge"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_reach_named_container_ports(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    for svc in of_kind(objs, "Service"):
        ns = svc["metadata"].get("namespace")
        pods = [w for w in of_kind(objs, *WORKLOADS) if w["metadata"].get("namespace") == ns
                and labels_match({"matchLabels": svc["spec"]["selector"]}, w["spec"]["template"]["metadata"]["labels"])]
        assert pods, f"Service {svc['metadata']['name']} selects no workload"
        names = {(p["name"], p.get("protocol", "TCP")) for w in pods for c in pod_spec(w)["containers"]
                 for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert (port["targetPort"], port.get("protocol", "TCP")) in names, f"{svc['metadata']['name']} {port}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dns_is_highly_available_on_stable_client_addresses(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    dns = named(objs, "Deployment", "heatcache-dns")
    assert dns["spec"]["replicas"] >= 2
    pdb = named(objs, "PodDisruptionBudget", "heatcache-dns")
    assert 1 <= pdb["spec"]["minAvailable"] < dns["spec"]["replicas"]
    for svc in of_kind(objs, "Service"):
        if svc["spec"].get("type") == "LoadBalancer":
            assert svc["spec"]["externalTrafficPolicy"] == "Local", svc["metadata"]["name"]
            ipaddress.ip_address(svc["metadata"]["annotations"]["metallb.io/loadBalancerIPs"])
    svc = named(objs, "Service", "heatcache-dns")
    assert {(p["port"], p["protocol"]) for p in svc["spec"]["ports"]} == {(53, "UDP"), (53, "TCP")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_image_is_configurable_and_pinned(rendered: dict[str, list[Obj]], overlay: str) -> None:
    for w in of_kind(rendered[overlay], *WORKLOADS):
        for c in [*pod_spec(w).get("initContainers", []), *pod_spec(w)["containers"]]:
            image = c["image"]
            assert re.fullmatch(r"[\w./-]+(:[\w.-]+)", image), f"{w['metadata']['name']}: {image}"
            assert not image.endswith(":latest")


def test_the_not_yet_on_runner_list_is_true() -> None:
    done = {stage for stage in NOT_YET_ON_RUNNER if RUNNER_SPEC[stage] in ALL_STAGES}
    assert not done, f"{done} now run on the runner: drop them from NOT_YET_ON_RUNNER"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_users_name_real_topics_and_every_client_has_one(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    topics = {t["spec"]["topicName"] for t in of_kind(objs, "KafkaTopic")}
    users = {u["metadata"]["name"]: u for u in of_kind(objs, "KafkaUser")}
    for name, user in users.items():
        assert user["spec"]["authentication"]["type"] == "tls", name
        for acl in user["spec"]["authorization"]["acls"]:
            res = acl["resource"]
            if res["type"] != "topic":
                continue
            if res["patternType"] == "literal":
                assert res["name"] in topics, f"{name}: ACL on unknown topic {res['name']}"
            else:
                assert any(t.startswith(res["name"]) for t in topics), f"{name}: prefix {res['name']} matches nothing"
    # every stage container's client certificate is a KafkaUser's Secret
    for w, c, stage in stage_containers(objs):
        mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
        vols = {v["name"]: v for v in pod_spec(w)["volumes"]}
        (user_vol,) = [n for n, p in mounts.items() if p == "/etc/heatcache/kafka-user"]
        assert vols[user_vol]["secret"]["secretName"] in users, stage


def test_every_secret_the_manifests_read_is_documented(rendered: dict[str, list[Obj]]) -> None:
    """docs/operations.md tells the operator how to create each Secret and key (Strimzi makes the rest)."""
    doc = (K8S.parent / "docs" / "operations.md").read_text()
    for overlay in OVERLAYS:
        objs = rendered[overlay]
        strimzi_made = {u["metadata"]["name"] for u in of_kind(objs, "KafkaUser")}
        strimzi_made.add(f"{gen.CLUSTER}-cluster-ca-cert")
        for w in of_kind(objs, *WORKLOADS):
            for c in [*pod_spec(w).get("initContainers", []), *pod_spec(w)["containers"]]:
                for item in c.get("env", []):
                    ref = item.get("valueFrom", {}).get("secretKeyRef")
                    if ref and ref["name"] not in strimzi_made:
                        documented = ref["name"] in doc and f"--from-literal={ref['key']}=" in doc
                        assert documented, f"{overlay}: {ref} not in the docs"
            for v in pod_spec(w)["volumes"]:
                if "secret" in v:
                    assert v["secret"]["secretName"] in strimzi_made | set(doc.split()), v
