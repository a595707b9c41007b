"""`lmforge serve` argument errors (the server itself: tests/serve/)."""

from __future__ import annotations

import socket


def test_serve_and_chat_argument_errors(tmp_path, run):
    code, _, err = run("serve", "--model", str(tmp_path / "nope"))
    assert code == 2 and "no such directory" in err
    code, _, err = run("chat", "--model", str(tmp_path), "--temperature", "-1")
    assert code == 2 and "--temperature" in err
    code, _, err = run("serve", "--model", str(tmp_path), "--max-model-len", "0")
    assert code == 2 and "--max-model-len must be positive" in err
    code, _, err = run("serve", "--model", str(tmp_path), "--port", "70000")
    assert code == 2 and "--port must be in 0..65535" in err


def test_serve_refuses_a_busy_port(chat_model_dir, run):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        code, _, err = run("serve", "--model", str(chat_model_dir), "--port", str(port))
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in err


def test_lora_flag_errors(chat_model_dir, tmp_path, run):
    model = str(chat_model_dir)
    code, _, err = run("serve", "--model", model, "--lora", "nameonly")
    assert code == 2 and "expected NAME=DIR" in err
    code, _, err = run("serve", "--model", model, "--lora", f"bad.name={tmp_path}")
    assert code == 2 and "NAME may use" in err
    code, _, err = run("serve", "--model", model, "--lora", f"a={tmp_path}", f"a={tmp_path}")
    assert code == 2 and "given twice" in err
    code, _, err = run("serve", "--model", model, "--lora", f"a={tmp_path / 'no'}")
    assert code == 2 and "is not a folder" in err
    code, _, err = run("serve", "--model", model, "--adapter", str(tmp_path), "--lora",
                       f"a={tmp_path}")  # fmt: skip
    assert code == 2 and "not both" in err


def test_engine_commands_pick_cuda_when_present(monkeypatch):
    """``--device auto`` (the default of serve and chat) resolves as training does."""
    import torch

    from lmforge.cli import build_parser
    from lmforge.train.distributed import resolve_device

    for verb in ("serve", "chat"):
        args = build_parser().parse_args([verb, "--model", "m"])
        assert args.device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_serve_takes_a_hub_id_or_an_adapters_recorded_base(checkpoint, adapter, hf_cache, run,
                                                           monkeypatch):  # fmt: skip
    """``--model Org/Name`` resolves through the local HF cache and is the served name;
    ``--adapter`` alone serves the base the adapter records; neither is an error."""
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(app))
    hf_cache("Org/Tiny")
    code, out, err = run("serve", "--model", "Org/Tiny", "--port", "0")
    assert code == 0, err
    assert "serving 'Org/Tiny' on" in out and len(served) == 1
    folder, _ = checkpoint
    code, out, err = run("serve", "--adapter", str(adapter), "--port", "0")
    assert code == 0, err
    assert f"serving '{folder.name}' on" in out and len(served) == 2
    code, _, err = run("serve", "--model", "Org/Missing", "--port", "0")
    assert code == 2 and "huggingface-cli download Org/Missing" in err
    code, _, err = run("serve", "--port", "0")
    assert code == 2 and "name the model: --model DIR (or --adapter DIR" in err


def test_compile_decode_flag_maps_to_the_engine_option():
    from lmforge.cli import build_parser
    from lmforge.commands.serve import COMPILE_DECODE

    parser = build_parser()
    assert parser.parse_args(["serve", "--model", "m"]).compile_decode == "off"
    args = parser.parse_args(["serve", "--model", "m", "--compile-decode", "eager"])
    assert COMPILE_DECODE[args.compile_decode] == "eager"
    assert COMPILE_DECODE["inductor"] is True and COMPILE_DECODE["off"] is False
