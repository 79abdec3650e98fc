"""The environment block every report carries, so a number is never read without the machine it came from.

Everything here is read, never assumed: a library that is not importable is reported as ``None`` and a
machine without ``nvidia-smi`` reports its GPU as ``"none"``.
"""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import subprocess
import sys
from typing import Any

# Module name -> the name shown in the report. Order is the order of the table.
LIBRARIES: dict[str, str] = {
    "numpy": "numpy",
    "onnxruntime": "onnxruntime",
    "cv2": "opencv",
    "torch": "torch",
    "tensorrt": "tensorrt",
    "onnx": "onnx",
    "paho.mqtt": "paho-mqtt",
    "psutil": "psutil",
    "matplotlib": "matplotlib",
}


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux, including Jetson), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


# CPU features that decide whether int8 can beat fp32 on the CPU: without a dot-product instruction (VNNI on
# x86, dotprod on Arm) int8 matrix products are barely faster than fp32 FMA ones.
INT8_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def cpu_int8_flags() -> dict[str, bool] | None:
    """Which of INT8_CPU_FLAGS /proc/cpuinfo lists (None where there is no /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            words: set[str] = set()
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    words.update(value.split())
    except OSError:
        return None
    return {flag: flag in words for flag in INT8_CPU_FLAGS}


def cpu_counts() -> dict[str, int | None]:
    """Logical cores, physical cores (psutil, if installed) and the cores this process may run on."""
    physical = None
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"logical": os.cpu_count(), "physical": physical, "usable": usable}


def gpus() -> list[dict[str, str]] | str:
    """One entry per GPU from ``nvidia-smi``, or ``"none"`` where it is absent or finds nothing."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return "none"
    try:
        out = subprocess.run(
            [binary, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"none (nvidia-smi failed: {exc})"
    rows = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    if out.returncode != 0 or not rows:
        return f"none (nvidia-smi exit {out.returncode}: {out.stderr.strip()[:200]})"
    found = []
    for row in rows:
        parts = [p.strip() for p in row.split(",")]
        parts += [""] * (3 - len(parts))
        found.append({"name": parts[0], "driver": parts[1], "memory": parts[2]})
    return found


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries that shape the numbers; ``None`` where the library is not importable."""
    versions: dict[str, str | None] = {}
    for module, shown in LIBRARIES.items():
        try:
            mod = importlib.import_module(module)
        except Exception:  # not installed, or broken (e.g. tensorrt without its CUDA libraries)
            versions[shown] = None
            continue
        versions[shown] = str(getattr(mod, "__version__", None) or getattr(mod, "version", "unknown"))
    return versions


def torch_cuda() -> str | None:
    """The CUDA device torch sees, ``"none"`` without one, ``None`` when torch is not importable."""
    try:
        import torch
    except Exception:
        return None
    if not torch.cuda.is_available():
        return "none"
    return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"


def onnxruntime_providers() -> list[str] | None:
    try:
        import onnxruntime
    except Exception:
        return None
    return list(onnxruntime.get_available_providers())


def mosquitto_version() -> str | None:
    """First line of ``mosquitto -h`` (it prints its version there), or None where it is not installed."""
    from tools.local_broker import mosquitto_binary

    binary = mosquitto_binary()
    if binary is None:
        return None
    try:
        out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def load_average() -> list[float] | None:
    """1/5/15-minute load when the report starts: a busy machine explains a noisy number."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def environment() -> dict[str, Any]:
    """The environment block: CPU, cores, GPU, library versions, OS, Python."""
    return {
        "cpu": cpu_model(),
        "cores": cpu_counts(),
        "cpu_int8_flags": cpu_int8_flags(),
        "gpu": gpus(),
        "torch_cuda": torch_cuda(),
        "onnxruntime_providers": onnxruntime_providers(),
        "libraries": library_versions(),
        "mosquitto": mosquitto_version(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "load_average": load_average(),
    }
