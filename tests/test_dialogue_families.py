"""Every LVLM family the README offers (SmolVLM, LLaVA-OneVision, Qwen2-VL), each as a tiny random model of its own
architecture built from a config: the responder answers, first-token P(yes) works, LoRA adapts only language-model
projections (vision tower and projector untouched by a training step), train-dialogue runs two steps and resumes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from zsad.dialogue.evidence import evidence_from_mask

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

#: tiny model name -> (model class, the module prefixes of its vision tower and of its projector)
FAMILIES = {
    "tiny-random": ("Idefics3ForConditionalGeneration", "model.vision_model.", "model.connector."),
    "tiny-random-llava-onevision": ("LlavaOnevisionForConditionalGeneration", "model.vision_tower.",
                                    "model.multi_modal_projector."),
    "tiny-random-qwen2-vl": ("Qwen2VLForConditionalGeneration", "model.visual.blocks.", "model.visual.merger."),
}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture
def evidence():
    mask = np.zeros((64, 64), dtype=bool)
    mask[4:14, 40:54] = True
    return evidence_from_mask(mask, "scratch", "disc")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from zsad.data.synthetic import make_dataset

    root = tmp_path_factory.mktemp("family-data")
    make_dataset(root, categories=["disc"], n_train_good=1, n_test_good=1, n_test_defect=2, size=48)
    return root


def _image_inputs(processor, n_images: int = 1):
    messages = [{"role": "user", "content": [*([{"type": "image"}] * n_images),
                                             {"type": "text", "text": "Is there any defect?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Yes, there is a scratch."}]}]
    from zsad.dialogue.training.train import encode_dialogue

    images = [Image.new("RGB", (64, 48), (120, 90, 60))] * n_images
    return encode_dialogue(processor, messages, images)


@pytest.mark.parametrize("name", FAMILIES)
def test_family_is_its_own_architecture_and_tiny(name):
    from zsad.dialogue.lvlm.tiny.tiny_lvlm import load_tiny

    model, processor = load_tiny(name)
    assert type(model).__name__ == FAMILIES[name][0]
    assert sum(p.numel() for p in model.parameters()) < 400_000
    inputs = _image_inputs(processor)
    image_id = model.config.image_token_id
    assert int((inputs["input_ids"] == image_id).sum()) >= 1  # the processor expanded the image placeholder
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_responder_answers_with_one_and_two_images(name, evidence):
    from zsad.dialogue.lvlm import LvlmResponder

    responder = LvlmResponder.load(name, device="cpu", precision="fp32")
    responder.max_new_tokens = 4
    assert responder.random_weights and name in responder.name
    image = Image.new("RGB", (64, 48), "gray")
    for kwargs in ({"image": image}, {"image": image, "overlay": image}, {}):
        said = responder.generate("Is there any defect?", evidence, history=[("Hi?", "Hello.")], **kwargs)
        assert isinstance(said, str) and said
    assert isinstance(responder.answer("Where is the defect?", evidence, image=image), str)


@pytest.mark.parametrize("name", FAMILIES)
def test_first_token_yes_probability(name, evidence):
    """Between 0 and 1, the same twice, and pushed to 1 or 0 when the yes or the no logits are raised."""
    from zsad.dialogue.lvlm.responder import NO_SPELLINGS, YES_SPELLINGS, LvlmResponder

    responder = LvlmResponder.load(name, device="cpu", precision="fp32")
    image = Image.new("RGB", (64, 48), "gray")
    plain = responder.yes_probability("Is there any defect?", evidence, image=image)
    assert plain is not None and 0.0 < plain < 1.0
    assert responder.yes_probability("Is there any defect?", evidence, image=image) == plain
    head = responder.model.get_output_embeddings()
    for spellings, expected in ((YES_SPELLINGS, 1.0), (NO_SPELLINGS, 0.0)):
        ids = responder._single_token_ids(spellings)
        assert ids

        def push(module, inputs, output, ids=ids):
            output = output.clone()
            output[..., ids] += 30.0
            return output

        handle = head.register_forward_hook(push)
        try:
            got = responder.yes_probability("Is there any defect?", evidence, image=image)
        finally:
            handle.remove()
        assert got == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("name", FAMILIES)
def test_lora_adapts_only_language_model_projections(name):
    from zsad.dialogue.lvlm.lora import apply_lora, lora_targets
    from zsad.dialogue.lvlm.tiny.tiny_lvlm import load_tiny

    model, processor = load_tiny(name)
    _, vision, projector = FAMILIES[name]
    modules = dict(model.named_modules())
    # the family has a vision tower and a projector with linear layers a bare name list or all-linear would adapt
    assert any(n.startswith(vision) and isinstance(m, torch.nn.Linear) for n, m in modules.items())
    assert any(n.startswith(projector) and isinstance(m, torch.nn.Linear) for n, m in modules.items())

    targets = lora_targets(model)
    layers = model.config.text_config.num_hidden_layers
    assert len(targets) == len(PROJECTIONS) * layers
    assert sorted(t.rsplit(".", 1)[1] for t in targets) == sorted(PROJECTIONS * layers)
    assert all(".language_model." in t or ".text_model." in t for t in targets)
    assert not [t for t in targets if t.startswith((vision, projector))]

    peft_model = apply_lora(model)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and (".language_model." in n or ".text_model." in n) for n in trainable)
    frozen = {n: p.detach().clone() for n, p in peft_model.named_parameters() if not p.requires_grad}
    assert any(vision in n for n in frozen) and any(projector in n for n in frozen)
    lora_b = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_B" in n}

    peft_model.train()
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):  # lora_B starts at 0: the second step moves lora_A too
        optimizer.zero_grad()
        peft_model(**_image_inputs(processor, n_images=2)).loss.backward()
        optimizer.step()
    after = dict(peft_model.named_parameters())
    untouched = [n for n, p in frozen.items() if torch.equal(after[n].detach(), p)]
    assert len(untouched) == len(frozen)  # vision tower, projector, embeddings and base weights as they were
    assert any(not torch.equal(after[n].detach(), p) for n, p in lora_b.items())


def _steps(folder):
    with open(folder / "train_log.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize("name", FAMILIES)
def test_train_dialogue_two_steps_then_resume(name, dataset, tmp_path, evidence):
    from zsad.cli import main
    from zsad.dialogue.lvlm import LvlmResponder

    out = tmp_path / "ad"
    common = ["train-dialogue", "--data", str(dataset), "--split", "all", "--out", str(out), "--base", name,
              "--batch-size", "1", "--device", "cpu", "-q"]
    assert main([*common, "--max-steps", "2"]) == 0
    assert _steps(out) == [1, 2]
    state = torch.load(out / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 2
    assert main([*common, "--max-steps", "3", "--resume"]) == 0
    assert _steps(out) == [1, 2, 3]  # continued from the checkpoint, not restarted
    config = json.loads((out / "adapter.json").read_text())
    assert (config["kind"], config["base_model"], config["steps"]) == ("lvlm-lora", name, 3)
    responder = LvlmResponder.load(name, adapter=str(out), device="cpu", precision="fp32")
    responder.max_new_tokens = 3
    assert isinstance(responder.answer("Where is the defect?", evidence, image=Image.new("RGB", (48, 48))), str)


def test_cpu_settings_cap_qwen_pixels_and_give_llava_one_grid():
    from zsad.dialogue.lvlm.responder import QWEN_MAX_PIXELS, cpu_friendly
    from zsad.dialogue.lvlm.tiny.tiny_llava_ov import tiny_lvlm as tiny_llava
    from zsad.dialogue.lvlm.tiny.tiny_qwen2_vl import tiny_model, tiny_processor

    big = Image.new("RGB", (1400, 1100))
    processor = tiny_processor(max_pixels=4000 * 4000)  # as Qwen2-VL ships: far more than a CPU wants
    patch = 14 * 14
    before = int(processor.image_processor(images=[big], return_tensors="pt")["image_grid_thw"].prod())
    assert before * patch > QWEN_MAX_PIXELS
    cpu_friendly(tiny_model(processor.tokenizer), processor)
    after = int(processor.image_processor(images=[big], return_tensors="pt")["image_grid_thw"].prod())
    assert after * patch <= QWEN_MAX_PIXELS < before * patch

    model, processor = tiny_llava()
    processor.image_processor.image_grid_pinpoints = model.config.image_grid_pinpoints = [[32, 32], [64, 64], [96, 96]]
    cpu_friendly(model, processor)
    assert processor.image_processor.image_grid_pinpoints == [[32, 32]] == model.config.image_grid_pinpoints
