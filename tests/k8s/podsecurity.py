"""Pod Security Standards "restricted" (baseline included), every control of the upstream profile, on pod specs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# https://kubernetes.io/docs/concepts/security/pod-security-standards/ (policy version 1.30)
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
PROFILE_TYPES = {"RuntimeDefault", "Localhost"}
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


def _containers(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{key}[{c.get('name', i)}]", c)
        for key in ("initContainers", "containers", "ephemeralContainers")
        for i, c in enumerate(spec.get(key) or [])
    ]


def _security_context_checks(where: str, ctx: dict[str, Any]) -> list[str]:
    """Controls that apply alike to the pod's and each container's securityContext."""
    out = []
    if (ctx.get("windowsOptions") or {}).get("hostProcess") is True:
        out.append(f"{where}: windowsOptions.hostProcess must not be true")
    se = ctx.get("seLinuxOptions") or {}
    if se.get("type", "") not in SELINUX_TYPES:
        out.append(f"{where}: seLinuxOptions.type {se['type']!r} is not allowed")
    for key in ("user", "role"):
        if se.get(key):
            out.append(f"{where}: seLinuxOptions.{key} must be empty")
    apparmor = ctx.get("appArmorProfile")
    if apparmor and apparmor.get("type") not in PROFILE_TYPES:
        out.append(f"{where}: appArmorProfile.type {apparmor.get('type')!r} is not RuntimeDefault or Localhost")
    seccomp = ctx.get("seccompProfile")
    if seccomp and seccomp.get("type") not in PROFILE_TYPES:
        out.append(f"{where}: seccompProfile.type {seccomp.get('type')!r} is not RuntimeDefault or Localhost")
    if ctx.get("runAsNonRoot") is False:
        out.append(f"{where}: runAsNonRoot must not be false")
    if ctx.get("runAsUser") == 0:
        out.append(f"{where}: runAsUser must not be 0")
    return out


def violations(spec: dict[str, Any], metadata: dict[str, Any] | None = None) -> list[str]:
    """Every "restricted" violation of a pod SPEC (with its METADATA for AppArmor annotations)."""
    out: list[str] = []
    pod_ctx = spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.append(f"pod: {key} must not be true")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"pod: volume {volume.get('name')!r} of type {sorted(kinds - RESTRICTED_VOLUMES)} not allowed")
    for sysctl in pod_ctx.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"pod: sysctl {sysctl.get('name')!r} is not in the safe set")
    out += _security_context_checks("pod", pod_ctx)
    for key, value in ((metadata or {}).get("annotations") or {}).items():
        if key.startswith(APPARMOR_ANNOTATION) and value != "runtime/default" and not value.startswith("localhost/"):
            out.append(f"pod: AppArmor annotation {key}={value!r} is not runtime/default or localhost/*")
    for where, container in _containers(spec):
        ctx = container.get("securityContext") or {}
        out += _security_context_checks(where, ctx)
        if ctx.get("privileged") is True:
            out.append(f"{where}: privileged must not be true")
        if ctx.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}: allowPrivilegeEscalation must be false")
        if ctx.get("procMount", "Default") != "Default":
            out.append(f"{where}: procMount must be Default")
        caps = ctx.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{where}: capabilities.drop must include ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{where}: capabilities.add may only hold NET_BIND_SERVICE")
        if ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is not True:
            out.append(f"{where}: runAsNonRoot must be true (pod or container)")
        seccomp = ctx.get("seccompProfile") or pod_ctx.get("seccompProfile")
        if not seccomp:
            out.append(f"{where}: seccompProfile must be set (pod or container) to RuntimeDefault or Localhost")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"{where}: hostPort {port['hostPort']} not allowed")
    return out


def pod_templates(doc: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(path, metadata, spec) of every pod spec in a rendered object: any mapping holding a `containers` list
    (PyTorchJob replicas, CronJob and Job templates, TrainJob runtime patches), with its template's metadata."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if isinstance(value, dict) and isinstance(value.get("containers"), list):
                yield f"{path}.{key}", doc.get("metadata") or {}, value
            else:
                yield from pod_templates(value, f"{path}.{key}")
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            yield from pod_templates(item, f"{path}[{i}]")
