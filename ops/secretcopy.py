"""Copy the sniffer's Strimzi-made Secrets (its KafkaUser client certificate and the cluster CA
certificate) from the pipeline's namespace into the capture namespace, where the sniffer's
DaemonSet mounts them: a pod can only mount Secrets of its own namespace, Strimzi writes them
next to the KafkaUser, and the sniffer runs apart (its namespace allows host networking).

Run by the CronJob of k8s/components/sniffer every 10 minutes, so a renewed certificate
(Strimzi renews 30 days before expiry) reaches the sniffer without anyone running kubectl.
The copy keeps the data and type, drops Strimzi's own labels and owner references (so no
operator adopts or deletes it) and is marked ``app.kubernetes.io/managed-by:
heatcache-secret-copier``. Its RBAC (components/sniffer/secret-copier.yaml) may read only those
two Secrets in the source and write only those names in the target.

Pure: :func:`copy_of`, :func:`plan`. I/O: :class:`KubeApi` (the pod's service-account token,
the in-cluster API address; stdlib only). ``python -m ops.secretcopy --from NS --to NS NAME...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("heatcache.secretcopy")

MANAGED_BY = "heatcache-secret-copier"
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
Obj = dict[str, Any]


def copy_of(secret: Mapping[str, Any], namespace: str) -> Obj:
    """The Secret to write into ``namespace`` for ``secret`` (pure)."""
    meta = secret["metadata"]
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if not k.startswith("strimzi.io/")}
    labels["app.kubernetes.io/managed-by"] = MANAGED_BY
    return {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": meta["name"], "namespace": namespace, "labels": labels,
                     "annotations": {"heatcache.io/copied-from": f"{meta.get('namespace', '')}/{meta['name']}"}},
        "type": secret.get("type", "Opaque"),
        "data": dict(secret.get("data") or {}),
    }


def plan(source: Mapping[str, Any] | None, target: Mapping[str, Any] | None, namespace: str) -> tuple[str, Obj | None]:
    """What to do for one name (pure): ("missing", None) when the source is not there (yet: Strimzi
    has not made it), ("create", obj), ("replace", obj), or ("same", None) when the copy is current."""
    if source is None:
        return "missing", None
    wanted = copy_of(source, namespace)
    if target is None:
        return "create", wanted
    if target.get("data") != wanted["data"] or target.get("type") != wanted["type"]:
        return "replace", wanted
    return "same", None


class KubeApi:
    """The few Secret calls the copier needs, with the pod's service account."""

    def __init__(self, base: str, token: str, ca: Path | None) -> None:
        self.base = base.rstrip("/")
        self.token = token
        self.ctx = ssl.create_default_context(cafile=str(ca) if ca is not None else None)

    @classmethod
    def in_cluster(cls) -> KubeApi:
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        literal = f"[{host}]" if ":" in host else host
        return cls(f"https://{literal}:{port}", (SA_DIR / "token").read_text().strip(), SA_DIR / "ca.crt")

    def _call(self, method: str, path: str, body: Obj | None = None) -> Obj | None:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
            "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=30) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and method == "GET":
                return None
            raise

    def get(self, namespace: str, name: str) -> Obj | None:
        return self._call("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")

    def create(self, namespace: str, obj: Obj) -> None:
        self._call("POST", f"/api/v1/namespaces/{namespace}/secrets", obj)

    def replace(self, namespace: str, name: str, obj: Obj) -> None:
        self._call("PUT", f"/api/v1/namespaces/{namespace}/secrets/{name}", obj)


def copy_all(api: KubeApi, source_ns: str, target_ns: str, names: list[str]) -> dict[str, str]:
    """Copy each name; what was done per name."""
    done = {}
    for name in names:
        action, obj = plan(api.get(source_ns, name), api.get(target_ns, name), target_ns)
        if action == "create" and obj is not None:
            api.create(target_ns, obj)
        elif action == "replace" and obj is not None:
            api.replace(target_ns, name, obj)
        done[name] = action
        log.info("%s/%s -> %s: %s", source_ns, name, target_ns, action)
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ops.secretcopy", description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="source", required=True, help="the namespace Strimzi writes the Secrets in")
    ap.add_argument("--to", dest="target", required=True, help="the namespace to copy them into")
    ap.add_argument("names", nargs="+")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    done = copy_all(KubeApi.in_cluster(), args.source, args.target, args.names)
    # a Secret Strimzi has not made yet: fail, so the Job's status shows it and the next run retries
    return 1 if "missing" in done.values() else 0


if __name__ == "__main__":
    sys.exit(main())
