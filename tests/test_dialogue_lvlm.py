"""LVLM responder on a tiny random SmolVLM (no download): prompting, generation, LoRA targets and adapters."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from zsad.dialogue.evidence import evidence_from_mask
from zsad.errors import AdapterError, WeightsNotFoundError

pytest.importorskip("transformers")
pytest.importorskip("peft")


@pytest.fixture(scope="module")
def tiny():
    from zsad.dialogue.lvlm.tiny.tiny_lvlm import tiny_lvlm

    return tiny_lvlm()


@pytest.fixture
def evidence():
    mask = np.zeros((64, 64), dtype=bool)
    mask[4:14, 4:14] = True
    return evidence_from_mask(mask, "scratch", "disc")


def test_prompt_carries_evidence_and_images(tiny, evidence):
    from zsad.dialogue.lvlm.responder import build_messages

    _, processor = tiny
    messages = build_messages("Is there any defect?", evidence, 2, history=[("Hello?", "Hi.")])
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert evidence.to_text() in text
    assert text.count("<image>") == 2
    assert text.index("Hello?") < text.index("Is there any defect?")
    assert text.endswith("Assistant:")


def test_tiny_lvlm_generates_answer(evidence):
    from zsad.dialogue.lvlm import LvlmResponder

    responder = LvlmResponder.load("tiny-random", device="cpu", precision="fp32")
    responder.max_new_tokens = 6
    assert responder.random_weights
    image = Image.new("RGB", (64, 48), "gray")
    for kwargs in ({"image": image}, {"image": image, "overlay": image}, {}):
        answer = responder.answer("Is there any defect?", evidence, history=[("Hi?", "Hello.")], **kwargs)
        assert isinstance(answer, str) and answer


def test_lora_targets_exclude_vision_tower(tiny):
    from zsad.dialogue.lvlm.lora import apply_lora, lora_targets

    model, _ = tiny
    targets = lora_targets(model)
    assert len(targets) == 7 * 2  # q/k/v/o/gate/up/down in each of the 2 text layers
    assert all("text_model" in t and "vision" not in t for t in targets)
    assert any("vision_model" in name and name.endswith("q_proj") for name, _ in model.named_modules())
    from zsad.dialogue.lvlm.tiny.tiny_lvlm import tiny_model

    peft_model = apply_lora(tiny_model(tiny[1].tokenizer))
    adapted = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert adapted and all("lora_" in n and "vision" not in n and "connector" not in n for n in adapted)


def test_adapter_round_trip(tmp_path, tiny):
    from zsad.adapters.folder import read_adapter_config
    from zsad.dialogue.lvlm.lora import LoraSettings, apply_lora, load_lora, save_lora
    from zsad.dialogue.lvlm.tiny.tiny_lvlm import tiny_model

    _, processor = tiny
    settings = LoraSettings(r=4, alpha=8)
    trained = apply_lora(tiny_model(processor.tokenizer), settings)
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    save_lora(trained, tmp_path / "ad", base_model="tiny-random", settings=settings)
    config = read_adapter_config(tmp_path / "ad", "lvlm-lora")
    assert (config["r"], config["alpha"], config["base_model"]) == (4, 8, "tiny-random")
    loaded = load_lora(tiny_model(processor.tokenizer), tmp_path / "ad")
    ids = torch.tensor([[2, 30, 25, 40, 41, 3]])
    trained.eval()
    with torch.no_grad():
        a, b = trained(input_ids=ids).logits, loaded(input_ids=ids).logits
        base = tiny_model(processor.tokenizer)(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, base, atol=1e-3)  # the adapter changes the model


def test_adapter_of_wrong_kind_is_refused(tmp_path, tiny):
    from zsad.adapters.folder import save_adapter
    from zsad.dialogue.lvlm.lora import load_lora

    save_adapter(tmp_path / "other", "prompt-learner", {}, {"x": torch.zeros(1)})
    with pytest.raises(AdapterError, match="lvlm-lora"):
        load_lora(tiny[0], tmp_path / "other")


def test_responder_loads_adapter(tmp_path, evidence):
    from zsad.dialogue.lvlm import LvlmResponder
    from zsad.dialogue.lvlm.lora import LoraSettings, apply_lora, save_lora
    from zsad.dialogue.lvlm.tiny.tiny_lvlm import tiny_lvlm

    model, _ = tiny_lvlm()
    save_lora(apply_lora(model), tmp_path / "ad", base_model="tiny-random", settings=LoraSettings(),
              extra={"second_view": False})
    responder = LvlmResponder.load("tiny-random", adapter=str(tmp_path / "ad"), device="cpu")
    responder.max_new_tokens = 3
    assert not responder.second_view and "ad" in responder.name
    assert isinstance(responder.answer("Where is the defect?", evidence, image=Image.new("RGB", (40, 40))), str)


def test_missing_weights_offline_message(tmp_path):
    from zsad.dialogue.lvlm import LvlmResponder

    with pytest.raises(WeightsNotFoundError) as info:
        LvlmResponder.load("nobody-org/no-such-vlm", cache_dir=str(tmp_path), offline=True, device="cpu")
    message = str(info.value)
    assert "nobody-org/no-such-vlm" in message and str(tmp_path) in message
    assert "huggingface-cli download" in message and "HF_HUB_OFFLINE" in message


def test_region_crop_contains_region(evidence):
    from zsad.dialogue.lvlm.responder import region_crop

    image = Image.new("RGB", (128, 128))  # evidence was made at 64 px: the box is scaled
    crop = region_crop(image, evidence)
    assert crop is not None and crop.size[0] >= 128 // 3 and crop.size[0] == crop.size[1]
    assert region_crop(image, evidence_from_mask(np.zeros((8, 8), bool))) is None


def test_dialogue_modules_do_not_import_transformers():
    code = ("import sys, zsad.dialogue.lvlm, zsad.dialogue.training.train, zsad.dialogue.lvlm.lora, "
            "zsad.dialogue.training.judge, zsad.dialogue.training.instructions, zsad.dialogue.lvlm.tiny.tiny_lvlm; "
            "print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


