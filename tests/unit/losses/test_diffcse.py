"""DiffCSE: RTD loss against a loop BCE, masking statistics, generators, SimCSE equality at lambda 0, errors, fit/resume.

The tests build a tiny random masked LM over the tiny model's vocabulary (no download).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

from embedkit.data import Examples
from embedkit.data.collate import collate
from embedkit.encoders import build_tiny_model, load_encoder
from embedkit.encoders.batching import embed_batch
from embedkit.encoders.generators import MaskedLMGenerator, UnigramGenerator, load_generator, special_token_mask
from embedkit.errors import ConfigError, EmbedkitError
from embedkit.losses import LOSSES, InfoNCELoss, build_loss
from embedkit.losses.diffcse import DiffCSEObjective, maskable_positions, replacement_mask, rtd_loss
from embedkit.training.fit import FitSettings, fit
from embedkit.types import Example, Kind

SENTENCES = [
    "the cat sat on the mat",
    "a dog runs in the park",
    "the sun rises in the east",
    "rain falls on the green hills",
    "she plays the piano every evening",
    "he reads a book about old ships",
    "the train leaves at noon",
    "children build a castle of sand",
]


def build_tiny_mlm(path: Path, tokenizer_dir: Path, vocab_size: int | None = None, with_tokenizer: bool = True) -> Path:
    """A random 1-layer BertForMaskedLM over the tokenizer in ``tokenizer_dir`` (or another vocabulary size)."""
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = BertConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(str(path))
    if with_tokenizer:
        tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_mlm_path(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_mlm(tmp_path_factory.mktemp("mlm") / "generator", tiny_model_path / "transformer")


def sentence_batch(texts: list[str] = SENTENCES[:4]):
    return collate([Example(anchor=t, positive=t) for t in texts], Kind.SENTENCES)


def diffcse(encoder, generator: str, **params) -> DiffCSEObjective:
    objective = build_loss("diffcse", generator=generator, **params)
    objective.setup(encoder)
    return objective


# -- the pieces against readable references ---------------------------------------------------------------------
def test_rtd_loss_matches_a_loop_bce() -> None:
    logits = torch.tensor([[0.3, -1.2, 2.0, 0.0], [1.5, -0.4, 9.0, -9.0]])
    replaced = torch.tensor([[False, True, True, False], [False, False, True, True]])
    attention = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])  # row 1 has two padding positions: left out
    terms = []
    for n in range(2):
        for t in range(4):
            if attention[n, t]:
                p = 1 / (1 + math.exp(-logits[n, t].item()))
                terms.append(-math.log(p) if replaced[n, t] else -math.log(1 - p))
    assert rtd_loss(logits, replaced, attention).item() == pytest.approx(sum(terms) / len(terms), rel=1e-6)


def test_masking_ratio_is_about_the_setting_and_never_touches_special_or_padding(tiny_model_path: Path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    texts = [" ".join(SENTENCES[i % 8].split()[: 2 + i % 5]) for i in range(400)]  # varied lengths: padding
    features = encoder.tokenize(texts)
    ids, attention = features["input_ids"], features["attention_mask"]
    special = special_token_mask(ids, encoder.model.tokenizer)
    maskable = maskable_positions(ids, attention, special)
    assert not maskable[:, 0].any() and not (maskable & special).any() and not (maskable & (attention == 0)).any()
    torch.manual_seed(0)
    masked = replacement_mask(maskable, 0.30)
    assert not (masked & ~maskable).any()
    assert masked.sum().item() / maskable.sum().item() == pytest.approx(0.30, abs=0.03)


@pytest.mark.parametrize("kind", ["unigram", "mlm"])
def test_generators_change_masked_positions_only(kind: str, tiny_model_path: Path, tiny_mlm_path: Path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    generator = load_generator("unigram" if kind == "unigram" else tiny_mlm_path)
    generator.bind(encoder.model.tokenizer)
    features = encoder.tokenize(SENTENCES)
    ids, attention = features["input_ids"], features["attention_mask"]
    maskable = maskable_positions(ids, attention, special_token_mask(ids, encoder.model.tokenizer))
    torch.manual_seed(1)
    masked = replacement_mask(maskable, 0.5)
    edited = generator.propose(ids, attention, masked)
    assert torch.equal(edited[~masked], ids[~masked])
    assert (edited >= 0).all() and (edited < len(encoder.model.tokenizer)).all()
    if kind == "unigram":  # replacements are words of the batch
        assert set(edited[masked].tolist()) <= set(ids[maskable].tolist())


def test_unigram_generator_follows_the_batch_frequencies() -> None:
    tokenizer_stub = type("T", (), {"all_special_ids": [0, 1]})()
    generator = UnigramGenerator()
    generator.bind(tokenizer_stub)
    ids = torch.tensor([[1, 7, 7, 7, 9, 0]]).repeat(500, 1)  # word 7 three times as frequent as word 9
    attention = (ids != 0).long()
    masked = torch.zeros_like(ids, dtype=torch.bool)
    masked[:, 4] = True
    torch.manual_seed(0)
    picked = generator.propose(ids, attention, masked)[:, 4]
    assert set(picked.tolist()) <= {7, 9}
    assert (picked == 7).float().mean().item() == pytest.approx(0.75, abs=0.05)


def test_argmax_generator_is_the_masked_lms_argmax(tiny_model_path: Path, tiny_mlm_path: Path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    generator = load_generator(tiny_mlm_path)
    assert isinstance(generator, MaskedLMGenerator)
    generator.bind(encoder.model.tokenizer)
    features = encoder.tokenize(SENTENCES[:2])
    ids, attention = features["input_ids"], features["attention_mask"]
    masked = torch.zeros_like(ids, dtype=torch.bool)
    masked[:, 2] = True
    torch.manual_seed(3)
    edited = generator.propose(ids, attention, masked)
    # Replay the corruption draw, then read the model's argmax at the masked column by hand.
    torch.manual_seed(3)
    roll = torch.rand(ids.shape)
    corrupted = ids.clone()
    corrupted[masked & (roll < 0.8)] = encoder.model.tokenizer.mask_token_id
    random_tokens = torch.randint(len(encoder.model.tokenizer), ids.shape)
    slots = masked & (roll >= 0.8) & (roll < 0.9)
    corrupted[slots] = random_tokens[slots]
    with torch.no_grad():
        expected = generator.model(input_ids=corrupted, attention_mask=attention).logits[:, 2].argmax(-1)
    assert torch.equal(edited[:, 2], expected)


# -- the objective ------------------------------------------------------------------------------------------------
def test_lambda_zero_without_projector_is_simcse(tiny_model_path: Path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32").train()
    objective = diffcse(encoder, "unigram", lambda_weight=0.0, batchnorm=False)
    batch = sentence_batch()
    torch.manual_seed(5)
    value = objective(encoder, batch)
    torch.manual_seed(5)
    expected = InfoNCELoss(temperature=0.05)(embed_batch(encoder, batch))
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    assert objective.discriminator is None  # lambda 0 needs no discriminator


@pytest.mark.parametrize("generator", ["unigram", "mlm"])
def test_rtd_trains_encoder_discriminator_and_projector_with_finite_gradients(
    generator: str, tiny_model_path: Path, tiny_mlm_path: Path
) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32").train()
    objective = diffcse(encoder, "unigram" if generator == "unigram" else str(tiny_mlm_path), lambda_weight=1.0)
    objective.train()
    # Adversarial: one sentence repeated; duplicates mask every in-batch negative, the InfoNCE term is 0.
    batch = sentence_batch(["the cat sat on the mat"] * 4)
    torch.manual_seed(0)
    value = objective(encoder, batch)
    assert torch.isfinite(value) and value.item() > 0
    value.backward()
    for name, module in [
        ("encoder", encoder),
        ("discriminator", objective.discriminator),
        ("projector", objective.projector),
        ("rtd_head", objective.rtd_head),
    ]:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads, f"{name} got no gradient"
        assert all(torch.isfinite(g).all() for g in grads), name
    assert all(p.grad is None for p in objective.generator.parameters())  # frozen, no gradient


def test_the_condition_enters_the_discriminator(tiny_model_path: Path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    objective = diffcse(encoder, "unigram").eval()
    features = encoder.tokenize(SENTENCES[:2])
    ids, attention = features["input_ids"], features["attention_mask"]
    conditions = torch.randn(2, encoder.dim)
    first = objective.discriminate(ids, attention, None, conditions)
    second = objective.discriminate(ids, attention, None, conditions + 1.0)
    assert first.shape == ids.shape and not torch.allclose(first, second)
    assert not objective.discriminator.embeddings._forward_hooks  # the hook does not outlive the call


def test_heads_save_and_load(tiny_model_path: Path, tmp_path: Path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    objective = diffcse(encoder, "unigram")
    weights = objective.save_heads(tmp_path / "model")
    assert weights == tmp_path / "model" / "embedkit_heads" / "diffcse.safetensors"
    saved = load_file(str(weights))
    assert saved and all(k.split(".")[0] in ("discriminator", "projector", "rtd_head") for k in saved)
    other = diffcse(load_encoder(tiny_model_path, precision="fp32"), "unigram")
    torch.nn.init.ones_(other.rtd_head.weight)
    other.load_heads(tmp_path / "model")
    assert torch.equal(other.rtd_head.weight, objective.rtd_head.weight)
    with pytest.raises(EmbedkitError, match="do not fit"):
        diffcse(encoder, "unigram", batchnorm=False).load_heads(tmp_path / "model")


# -- errors -------------------------------------------------------------------------------------------------------
def test_missing_generator_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(EmbedkitError, match="generator model folder not found: .*nowhere"):
        build_loss("diffcse", generator=str(tmp_path / "nowhere"))


def test_an_encoder_without_mlm_head_is_not_a_generator(tiny_model_path: Path) -> None:
    with pytest.raises(ConfigError, match="no masked-LM head"):
        build_loss("diffcse", generator=str(tiny_model_path / "transformer"))


def test_vocabulary_mismatch_is_refused(tiny_model_path: Path, tmp_path: Path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    size = len(encoder.model.tokenizer)
    bigger = build_tiny_mlm(
        tmp_path / "bigger", tiny_model_path / "transformer", vocab_size=size + 7, with_tokenizer=False
    )
    with pytest.raises(ConfigError, match=f"{size + 7} tokens, the encoder's tokenizer {size}"):
        diffcse(encoder, str(bigger))
    # Same size, other words: caught by comparing the vocabularies themselves.
    other_words = build_tiny_model(tmp_path / "other", [" ".join(f"w{i}" for i in range(size - 5))])
    same_size = build_tiny_mlm(tmp_path / "same-size", other_words / "transformer")
    with pytest.raises(ConfigError, match="another vocabulary"):
        diffcse(encoder, str(same_size))


@pytest.mark.parametrize(
    "params", [{"lambda_weight": -0.1}, {"mask_ratio": 0.0}, {"mask_ratio": 1.0}, {"temperature": 0.0}]
)
def test_bad_settings(params: dict) -> None:
    with pytest.raises(ConfigError):
        build_loss("diffcse", generator="unigram", **params)


def test_forward_before_setup_is_an_error(tiny_model_path: Path) -> None:
    encoder = load_encoder(tiny_model_path, precision="fp32")
    with pytest.raises(ConfigError, match="setup"):
        build_loss("diffcse", generator="unigram")(encoder, sentence_batch())


def test_registered() -> None:
    spec = LOSSES.get("diffcse")
    assert spec.kinds == (Kind.SENTENCES,) and "Chuang" in spec.reference
    assert spec.parameters()["lambda_weight"] == 0.005 and spec.parameters()["mask_ratio"] == 0.30


# -- training -----------------------------------------------------------------------------------------------------
class Interrupt(Exception):
    pass


def interrupt_after_first_step(step: int, metrics: dict) -> None:
    if step == 1:
        raise Interrupt


def test_fit_trains_and_checkpoints_the_heads_and_resumes_exactly(
    tiny_model_path: Path, tiny_mlm_path: Path, tmp_path: Path
) -> None:
    examples = Examples([Example(anchor=s, positive=s) for s in SENTENCES], Kind.SENTENCES)

    def settings(folder: str) -> FitSettings:
        return FitSettings(
            output_dir=tmp_path / folder, batch_size=4, lr=1e-3, max_steps=2, save_steps=1, show_progress=False, seed=3
        )

    def start() -> tuple:
        encoder = load_encoder(tiny_model_path, precision="fp32")
        return encoder, diffcse(encoder, str(tiny_mlm_path), lambda_weight=0.5, sample_replacements=True)

    straight, objective = start()
    before = {k: v.clone() for k, v in objective.heads_state().items()}
    assert fit(straight, examples, objective, settings("straight")).steps == 2
    trained = objective.heads_state()
    assert any(not torch.equal(before[k], trained[k]) for k in before)  # the heads are optimised
    saved = load_file(str(tmp_path / "straight" / "final" / "embedkit_heads" / "diffcse.safetensors"))
    assert saved.keys() == trained.keys() and all(torch.equal(saved[k], trained[k]) for k in saved)

    state = load_file(str(tmp_path / "straight" / "checkpoint" / "loss.safetensors"))
    assert any(k.startswith("discriminator.") for k in state) and any(k.startswith("projector.") for k in state)
    frozen = {f"generator.{name}" for name, _ in objective.generator.named_parameters()}
    assert frozen and not frozen & set(state)  # the frozen generator is not checkpointed

    interrupted, interrupted_objective = start()
    with pytest.raises(Interrupt):
        fit(interrupted, examples, interrupted_objective, settings("resumed"), callbacks=[interrupt_after_first_step])
    resumed, resumed_objective = start()  # a new process: heads rebuilt, then restored from the checkpoint
    fit(resumed, examples, resumed_objective, settings("resumed"))
    assert all(torch.equal(straight.state_dict()[k], v) for k, v in resumed.state_dict().items())
    assert all(torch.equal(trained[k], v) for k, v in resumed_objective.heads_state().items())


def test_recipe_builds_offline() -> None:
    from embedkit.training.recipe import load_config

    config = load_config(Path(__file__).resolve().parents[3] / "recipes" / "diffcse.toml")
    objective = LOSSES.get(config.loss.name).build(**config.loss.params)
    assert isinstance(objective.generator, UnigramGenerator)
    assert (objective.lambda_weight, objective.mask_ratio, objective.batchnorm) == (0.005, 0.30, True)
    assert config.train.lr == 7e-6 and config.model.mlp_head is False


def test_runs_under_bf16_autocast(tiny_model_path: Path, tiny_mlm_path: Path) -> None:
    encoder = load_encoder(tiny_model_path, precision="bf16").train()
    objective = diffcse(encoder, str(tiny_mlm_path), lambda_weight=1.0).train()
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = objective(encoder, sentence_batch())
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert all(torch.isfinite(p.grad).all() for p in objective.discriminator.parameters() if p.grad is not None)
