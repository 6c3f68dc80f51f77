"""Which model a tool uses (the newest chat model by default), `llmpipe export --model/--registered`
(a registered MLflow version, downloaded through a real sqlite-backed MLflow), and when `llmpipe serve`
may bind beyond this machine."""

import shutil

import pytest
from safetensors.torch import load_file

from llmpipe.cli import main
from llmpipe.model.gpt import GPT, GPTConfig
from llmpipe.model.weights import save_model
from llmpipe.ops.models import chat_model, default_model, workspace_model
from llmpipe.ops.serve import check_exposure, is_loopback
from llmpipe.util.io import InputError


def tiny(seed: int) -> GPT:
    import torch

    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=320, n_layer=1, n_head=2, d_model=16, block_size=16))


@pytest.fixture
def root(tmp_path, tokenizer_file):
    root = tmp_path / "repo"
    (root / "data" / "tokenizer").mkdir(parents=True)
    shutil.copyfile(tokenizer_file, root / "data" / "tokenizer" / "tokenizer.json")
    save_model(tiny(0), root / "data" / "model")
    return root


def exported_embedding(folder):
    return load_file(str(folder / "model.safetensors"))["model.embed_tokens.weight"]


def test_the_newest_chat_model_is_the_default(root, tmp_path):
    assert default_model(root) == root / "data" / "model" and chat_model(root) is None
    with pytest.raises(InputError, match="no chat model"):
        workspace_model(root, "chat")
    save_model(tiny(1), root / "data" / "finetune" / "model")
    assert default_model(root) == workspace_model(root, "chat") == root / "data" / "finetune" / "model"
    # a reward stage's model, were there one, comes before the finetune's
    save_model(tiny(2), root / "data" / "rl" / "model")
    assert default_model(root) == root / "data" / "rl" / "model"
    assert workspace_model(root, "base") == root / "data" / "model"
    with pytest.raises(InputError, match="missing"):
        workspace_model(root, str(tmp_path / "nowhere"))


def test_export_picks_chat_base_a_folder_or_a_registered_version(root, tmp_path, monkeypatch):
    from llmpipe.ops.tracking import Tracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    save_model(tiny(1), root / "data" / "finetune" / "model")
    args = ["--root", str(root), "export"]
    assert main([*args, str(tmp_path / "default")]) == 0
    assert main([*args, "--model", "base", str(tmp_path / "base")]) == 0
    assert main([*args, "--model", str(root / "data" / "finetune" / "model"), str(tmp_path / "folder")]) == 0
    default, base = exported_embedding(tmp_path / "default"), exported_embedding(tmp_path / "base")
    assert default.equal(exported_embedding(tmp_path / "folder")) and not default.equal(base)
    assert default.equal(tiny(1).tok_emb.weight.detach())
    # a registered version (a third model), through MLflow's own registry in the workspace's sqlite store
    registered = tmp_path / "registered"
    save_model(tiny(3), registered)
    tracker = Tracker(root, "exp", "finetune")
    version = tracker.log_model(registered, "llmpipe-gpt-chat", {})
    tracker.end()
    assert str(version) == "1"
    assert main([*args, "--registered", "llmpipe-gpt-chat/1", str(tmp_path / "reg")]) == 0
    assert main([*args, "--format", "gguf", "--model", "models:/llmpipe-gpt-chat/1", str(tmp_path / "reg.gguf")]) == 0
    assert exported_embedding(tmp_path / "reg").equal(tiny(3).tok_emb.weight.detach())
    assert (tmp_path / "reg.gguf").stat().st_size > 0
    assert main([*args, "--registered", "llmpipe-gpt-chat/7", str(tmp_path / "none")]) == 2
    assert main([*args, "--registered", "nonsense", str(tmp_path / "none")]) == 2
    assert not (tmp_path / "none").exists()


def test_a_server_beyond_loopback_needs_a_key_or_insecure(capsys):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.168.1.4")
    assert not is_loopback("myhost.example")  # a name: assume it is reachable
    check_exposure("127.0.0.1", None, False)
    check_exposure("0.0.0.0", "key", False)
    with pytest.raises(InputError, match="--insecure"):
        check_exposure("0.0.0.0", None, False)
    check_exposure("0.0.0.0", None, True)
    assert "WARNING" in capsys.readouterr().err
