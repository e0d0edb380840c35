"""Kubelet-like rendering of a container's environment and $(VAR) references."""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Optional

from .quantity import parse_quantity


class ConfigError(RuntimeError):
    """A referenced ConfigMap/Secret/key is missing (the kubelet's CreateContainerConfigError)."""


def expand(text: str, lookup: Callable[[str], Optional[str]]) -> str:
    """Expand ``$(VAR)`` as the kubelet does.

    ``$$`` is an escaped ``$``; ``$(NAME)`` becomes the value of NAME when it is
    defined and stays as written otherwise; any other ``$`` is kept.
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c != "$" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end == -1:
                out.append(text[i:])
                break
            name = text[i + 2:end]
            value = lookup(name)
            out.append(value if value is not None else text[i:end + 1])
            i = end + 1
        else:
            out.append("$")
            i += 1
    return "".join(out)


_FIELD_RE = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_value(pod: dict[str, Any], path: str, pod_ip: str, host_ip: str) -> str:
    meta = pod["metadata"]
    m = _FIELD_RE.match(path)
    if m:
        return str(meta.get(m.group(1), {}).get(m.group(2), ""))
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
    }
    if path in simple:
        return str(simple[path])
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1], {}) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise ConfigError(f"unsupported fieldRef {path}")


def resource_value(container: dict[str, Any], ref: dict[str, Any], node_allocatable: dict[str, str]) -> str:
    """``resourceFieldRef``: the limit (or request), divided by the divisor and rounded up."""
    resource = ref["resource"]
    kind, _, name = resource.partition(".")
    resources = container.get("resources", {}) or {}
    raw = (resources.get(kind, {}) or {}).get(name)
    if raw is None and kind == "limits":
        raw = node_allocatable.get(name, "0")
    if raw is None:
        raw = "0"
    divisor = parse_quantity(ref.get("divisor") or "1")
    return str(math.ceil(parse_quantity(raw) / divisor))


def container_env(
    pod: dict[str, Any],
    container: dict[str, Any],
    base: dict[str, str],
    get_configmap: Callable[[str], Optional[dict[str, str]]],
    get_secret: Callable[[str], Optional[dict[str, str]]],
    pod_ip: str,
    host_ip: str,
    node_allocatable: dict[str, str],
) -> dict[str, str]:
    """The container's environment: ``base``, then envFrom, then env (in order, expanded)."""
    env = dict(base)

    def source(kind: str, name: str, optional: bool) -> dict[str, str]:
        data = (get_configmap if kind == "configMap" else get_secret)(name)
        if data is None:
            if optional:
                return {}
            raise ConfigError(f'{kind} "{name}" not found')
        return data

    for ef in container.get("envFrom", []) or []:
        prefix = ef.get("prefix", "")
        for kind in ("configMap", "secret"):
            ref = ef.get(f"{kind}Ref")
            if ref:
                for k, v in source(kind, ref["name"], bool(ref.get("optional"))).items():
                    env[prefix + k] = v

    for var in container.get("env", []) or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env.get)
            continue
        vf = var["valueFrom"]
        if "fieldRef" in vf:
            env[name] = field_value(pod, vf["fieldRef"]["fieldPath"], pod_ip, host_ip)
        elif "resourceFieldRef" in vf:
            env[name] = resource_value(container, vf["resourceFieldRef"], node_allocatable)
        else:
            kind = "configMap" if "configMapKeyRef" in vf else "secret"
            ref = vf[f"{kind}KeyRef"]
            data = source(kind, ref["name"], bool(ref.get("optional")))
            if ref["key"] in data:
                env[name] = data[ref["key"]]
            elif not ref.get("optional"):
                raise ConfigError(f'couldn\'t find key {ref["key"]} in {kind} {pod["metadata"]["namespace"]}/{ref["name"]}')
    return env
