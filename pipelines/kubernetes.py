"""Kubernetes settings of the compiled pipeline (kfp-kubernetes), chosen at compile time.

A real cluster needs more than an image and CPU/memory: credentials for the data source,
GPU steps on the GPU node pool, retries of the long steps, deadlines, labels to find the
pods, and disk for the artifacts. KFP v2 carries these in the package's *platform spec*
(the ``platforms: kubernetes:`` document of the compiled YAML), written by kfp-kubernetes;
retries are part of the pipeline spec itself (``retryPolicy`` of a task). kfp.local
ignores the platform spec, so a package compiled with these options still runs locally.

Everything here is opt-in: :class:`KubernetesOptions()` (the default) changes nothing, and
``python -m pipelines.compile`` without the options below writes the same YAML as before.

- ``secret_env``: ``ENV=SECRET:KEY`` - every step gets ``ENV`` from key ``KEY`` of the
  Kubernetes secret ``SECRET`` (S3 keys: ``AWS_ACCESS_KEY_ID=s3-creds:access_key``, ...).
- ``gcs_key_secret``: a secret holding a GCS service-account key file (where Workload
  Identity is not used): mounted read-only at :data:`GCS_KEY_DIR` on every step, with
  ``GOOGLE_APPLICATION_CREDENTIALS`` pointing at its key.
- ``gpu_node_selector`` / ``gpu_tolerations``: on the accelerated steps (train, evaluate,
  serving) of the GPU variant only.
- ``retries`` (+ backoff): ``set_retry`` on train, evaluate and serving.
- ``timeouts``: step -> seconds, the pod's ``activeDeadlineSeconds`` (``kubernetes.set_timeout``).
- ``labels``: pod labels on every step, plus ``lcron.dev/step`` and ``lcron.dev/variant``.
  Only what is known at compile time can be a label: a pipeline *parameter* (method, stages)
  is a run-time value and cannot become one (the run's parameters are in the KFP UI/API).
- ``ephemeral_storage`` + ``ephemeral_mount``: disk of the step's size mounted at
  ``ephemeral_mount`` - the launcher's local artifact root (``/gcs``, ``/s3`` or ``/minio``
  for a gs://, s3:// or minio:// pipeline root), where input artifacts are downloaded and
  outputs written. ``ephemeral_volume`` ``emptydir`` (default): an emptyDir with that
  ``sizeLimit`` on the node's disk (the kubelet evicts a pod that outgrows it; the scheduler
  does not reserve it, so the node pool's disks must be large enough); ``pvc``: a generic
  ephemeral volume (a PVC of that size made with the pod and deleted with it, of
  ``storage_class``). KFP's IR has no container ``ephemeral-storage`` request; these are
  its two ways to size a step's disk. An emptyDir is writable by the image's uid 1000; a
  fresh PVC's filesystem usually belongs to root and kfp-kubernetes 2.16.1 cannot set
  ``fsGroup``, so ``pvc`` needs a storage class/CSI driver that makes it writable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

from pipelines import resources as step_resources

ACCELERATED = ("train", "evaluate", "serving")
RETRIED = ACCELERATED
GCS_KEY_DIR = "/var/secrets/google"
GCS_KEY_FILE = "key.json"
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
STEP_LABEL = "lcron.dev/step"
VARIANT_LABEL = "lcron.dev/variant"
EPHEMERAL_VOLUME = "lcron-scratch"
VOLUME_KINDS = ("emptydir", "pvc")

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY_RE = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}$")
_LABEL_VALUE_RE = re.compile(rf"^({_NAME})?$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_SECRET_KEY_RE = re.compile(r"^[-._A-Za-z0-9]+$")
_DURATION_RE = re.compile(r"^\d+(\.\d+)?s$")


@dataclass(frozen=True)
class Toleration:
    key: str
    effect: str
    value: str | None = None  # None: operator Exists (any value)


@dataclass(frozen=True)
class KubernetesOptions:
    """Compile-time Kubernetes settings; the default is none at all."""

    secret_env: tuple[tuple[str, str, str], ...] = ()  # (env, secret, key)
    gcs_key_secret: str | None = None
    gcs_key_file: str = GCS_KEY_FILE
    gpu_node_selector: Mapping[str, str] = field(default_factory=dict)
    gpu_tolerations: tuple[Toleration, ...] = ()
    retries: int = 0
    retry_backoff: str | None = None
    retry_backoff_factor: float | None = None
    retry_backoff_max: str | None = None
    timeouts: Mapping[str, int] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    ephemeral_storage: Mapping[str, str] = field(default_factory=dict)
    ephemeral_mount: str | None = None
    ephemeral_volume: str = "emptydir"  # or "pvc"
    storage_class: str | None = None


# --- parsing (ValueError with a message naming the option and the expected form) ---

def parse_secret_env(text: str) -> tuple[str, str, str]:
    """``ENV=SECRET:KEY`` -> (env, secret, key)."""
    env, sep, rest = text.partition("=")
    secret, sep2, key = rest.partition(":")
    env, secret, key = env.strip(), secret.strip(), key.strip()
    if not (sep and sep2 and _ENV_RE.match(env) and _SECRET_RE.match(secret) and _SECRET_KEY_RE.match(key)):
        raise ValueError(f"--secret-env {text!r}: expected ENV=SECRET:KEY, e.g. AWS_ACCESS_KEY_ID=s3-creds:access_key "
                         "(ENV a variable name, SECRET a Kubernetes secret name, KEY a key of it)")
    return env, secret, key


def parse_secret_name(text: str, option: str = "--gcs-key-secret") -> str:
    if not _SECRET_RE.match(text):
        raise ValueError(f"{option} {text!r}: not a Kubernetes secret name (lower case, digits, '-', '.')")
    return text


def parse_label(text: str, option: str = "--label") -> tuple[str, str]:
    """``KEY=VALUE`` -> (key, value), both valid Kubernetes label syntax."""
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not _LABEL_KEY_RE.match(key) or not _LABEL_VALUE_RE.match(value):
        raise ValueError(f"{option} {text!r}: expected KEY=VALUE with a Kubernetes label key (e.g. lcron.dev/git-sha) "
                         "and value (at most 63 of A-Z a-z 0-9 - _ ., starting and ending alphanumeric)")
    return key, value


def parse_toleration(text: str) -> Toleration:
    """``KEY[=VALUE]:EFFECT`` -> a toleration (no value: operator Exists)."""
    head, sep, effect = text.rpartition(":")
    key, eq, value = head.partition("=")
    key, value, effect = key.strip(), value.strip(), effect.strip()
    if not sep or effect not in EFFECTS or not _LABEL_KEY_RE.match(key) or (eq and not _LABEL_VALUE_RE.match(value)):
        raise ValueError(f"--gpu-toleration {text!r}: expected KEY[=VALUE]:EFFECT, e.g. "
                         "nvidia.com/gpu=present:NoSchedule or nvidia.com/gpu:NoSchedule; "
                         f"EFFECT one of {', '.join(EFFECTS)}")
    return Toleration(key=key, effect=effect, value=value if eq else None)


def parse_duration(text: str, option: str) -> str:
    """``60``, ``60s`` or ``1.5s`` -> a protobuf duration string (``60s``)."""
    value = text.strip()
    if re.match(r"^\d+(\.\d+)?$", value):
        value += "s"
    if not _DURATION_RE.match(value):
        raise ValueError(f"{option} {text!r}: expected seconds, e.g. 60 or 60s")
    return value


def parse_timeout(step: str, seconds: str) -> tuple[str, int]:
    if step not in step_resources.STEPS:
        raise ValueError(f"--timeout: unknown step {step!r}; steps: {', '.join(step_resources.STEPS)}")
    if not seconds.isdigit() or int(seconds) < 1:
        raise ValueError(f"--timeout {step}={seconds!r}: expected a whole number of seconds >= 1")
    return step, int(seconds)


# --- applying to the tasks ---

def apply(tasks: Mapping[str, object], options: KubernetesOptions, *, gpu: bool, variant: str) -> None:
    """Put ``options`` on the pipeline's tasks (step name -> PipelineTask)."""
    if options == KubernetesOptions():
        return
    from kfp import kubernetes

    for step, task in tasks.items():
        for env, secret, key in options.secret_env:
            kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env={key: env})
        if options.gcs_key_secret:
            kubernetes.use_secret_as_volume(task, secret_name=options.gcs_key_secret, mount_path=GCS_KEY_DIR)
            task.set_env_variable("GOOGLE_APPLICATION_CREDENTIALS", f"{GCS_KEY_DIR}/{options.gcs_key_file}")
        if options.labels:
            for key, value in {**options.labels, STEP_LABEL: step, VARIANT_LABEL: variant}.items():
                kubernetes.add_pod_label(task, key, value)
        if step in options.timeouts:
            kubernetes.set_timeout(task, options.timeouts[step])
        if options.ephemeral_mount and options.ephemeral_storage.get(step) and options.ephemeral_volume == "emptydir":
            kubernetes.empty_dir_mount(task, volume_name=EPHEMERAL_VOLUME, mount_path=options.ephemeral_mount,
                                       size_limit=options.ephemeral_storage[step])
        elif options.ephemeral_mount and options.ephemeral_storage.get(step):
            kubernetes.add_ephemeral_volume(task, volume_name=EPHEMERAL_VOLUME, mount_path=options.ephemeral_mount,
                                            access_modes=["ReadWriteOnce"], size=options.ephemeral_storage[step],
                                            storage_class_name=options.storage_class)
        if options.retries and step in RETRIED:
            task.set_retry(options.retries, backoff_duration=options.retry_backoff,
                           backoff_factor=options.retry_backoff_factor,
                           backoff_max_duration=options.retry_backoff_max)
        if gpu and step in ACCELERATED:
            for key, value in options.gpu_node_selector.items():
                kubernetes.add_node_selector(task, key, value)
            for tol in options.gpu_tolerations:
                kubernetes.add_toleration(task, key=tol.key, operator="Equal" if tol.value is not None else "Exists",
                                          value=tol.value, effect=tol.effect)
