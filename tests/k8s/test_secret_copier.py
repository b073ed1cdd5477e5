"""The sniffer's Secret copier (ops/secretcopy.py + k8s/components/sniffer/secret-copier.yaml):
what a copy holds and when it is written (pure), and, in every overlay, that the CronJob copies
exactly the Strimzi-made Secrets the sniffer mounts into the sniffer's namespace, with RBAC
limited to those names, a hardened pod and egress to the API only."""

from __future__ import annotations

from typing import Any

import pytest

from ops import k8s as gen
from ops.secretcopy import MANAGED_BY, copy_of, plan
from tests.k8s.conftest import OVERLAYS
from tests.k8s.test_manifests import SNIFFER, named, of_kind, pod_spec

Obj = dict[str, Any]
COPIER = "heatcache-secret-copier"


def _secret(data: dict[str, str], **meta: Any) -> Obj:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": data,
            "metadata": {"name": "heatcache-sniffer", "namespace": "heatcache", "uid": "u1", "resourceVersion": "7",
                         "ownerReferences": [{"kind": "KafkaUser", "name": "heatcache-sniffer"}],
                         "labels": {"strimzi.io/kind": "KafkaUser", "strimzi.io/cluster": "heatcache-kafka",
                                    "app": "x"}, **meta}}


def test_a_copy_keeps_the_data_and_drops_the_operator_links() -> None:
    src = _secret({"user.crt": "Y2VydA==", "user.key": "a2V5"})
    copy = copy_of(src, "heatcache-capture")
    assert copy["data"] == src["data"] and copy["type"] == "Opaque"
    meta = copy["metadata"]
    assert meta["namespace"] == "heatcache-capture" and meta["name"] == "heatcache-sniffer"
    assert meta["labels"] == {"app": "x", "app.kubernetes.io/managed-by": MANAGED_BY}
    assert not {"uid", "resourceVersion", "ownerReferences"} & set(meta)  # no operator adopts or deletes it
    assert meta["annotations"]["heatcache.io/copied-from"] == "heatcache/heatcache-sniffer"


def test_plan_writes_only_what_changed() -> None:
    src = _secret({"user.crt": "b2xk"})
    assert plan(None, None, "t") == ("missing", None)  # Strimzi has not made it yet
    action, obj = plan(src, None, "t")
    assert action == "create" and obj == copy_of(src, "t")
    assert plan(src, copy_of(src, "t"), "t") == ("same", None)
    renewed = _secret({"user.crt": "bmV3"})
    assert plan(renewed, copy_of(src, "t"), "t") == ("replace", copy_of(renewed, "t"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_copier_copies_what_the_sniffer_mounts(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objs = rendered[overlay]
    sniffer = named(objs, "DaemonSet", SNIFFER)
    target = sniffer["metadata"]["namespace"]
    strimzi_made = {u["metadata"]["name"] for u in of_kind(objs, "KafkaUser")} | {f"{gen.CLUSTER}-cluster-ca-cert"}
    source = named(objs, "KafkaUser", "heatcache-sniffer")["metadata"].get("namespace", "heatcache")
    mounted = {v["secret"]["secretName"] for v in pod_spec(sniffer)["volumes"] if "secret" in v}
    needed = mounted & strimzi_made
    assert needed == {"heatcache-sniffer", f"{gen.CLUSTER}-cluster-ca-cert"}

    job = named(objs, "CronJob", COPIER)
    assert job["metadata"]["namespace"] == source
    spec = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    cmd = c["command"]
    assert cmd[:3] == ["python", "-m", "ops.secretcopy"]
    assert cmd[cmd.index("--from") + 1] == source and cmd[cmd.index("--to") + 1] == target
    assert set(cmd[cmd.index("--to") + 2:]) == needed

    # RBAC: read those names in the source, write those names in the target, nothing else
    sa = spec["serviceAccountName"]
    rules: dict[str, list[Obj]] = {}
    for rb in of_kind(objs, "RoleBinding"):
        if any(s["kind"] == "ServiceAccount" and s["name"] == sa and s["namespace"] == source for s in rb["subjects"]):
            ns = rb["metadata"]["namespace"]
            rules[ns] = named(objs, "Role", rb["roleRef"]["name"], ns)["rules"]
    assert not any(rb["roleRef"]["kind"] == "ClusterRole" for rb in of_kind(objs, "RoleBinding", "ClusterRoleBinding")
                   if any(s["name"] == sa for s in rb.get("subjects", [])))
    assert set(rules) == {source, target}
    for ns, verbs_named in ((source, {"get"}), (target, {"get", "update"})):
        for rule in rules[ns]:
            assert rule["apiGroups"] == [""] and rule["resources"] == ["secrets"], rule
            if "resourceNames" in rule:
                assert set(rule["resourceNames"]) == needed and set(rule["verbs"]) == verbs_named, rule
            else:  # create cannot be limited by name: only in the target, and nothing else unnamed
                assert ns == target and rule["verbs"] == ["create"], rule

    # hardened like every workload; its token is mounted because it talks to the API
    assert spec["automountServiceAccountToken"] is True
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    assert {"cpu", "memory"} <= set(c["resources"]["limits"])
    assert c["image"] == pod_spec(sniffer)["containers"][0]["image"]  # the overlay's image
    # egress from the default-deny namespace: the API's ports, for this pod only
    labels = job["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    allowed = [p for p in of_kind(objs, "NetworkPolicy") if p["metadata"].get("namespace") == source
               and p["spec"]["podSelector"].get("matchLabels") == labels]
    assert len(allowed) == 1 and allowed[0]["spec"]["policyTypes"] == ["Egress"]
    assert {p["port"] for e in allowed[0]["spec"]["egress"] for p in e["ports"]} == {443, 6443}
