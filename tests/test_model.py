import math

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, T5Config
from transformers.activations import ACT2FN

from cai_lightning.data.collate import PadCollator
from cai_lightning.data.tokenization import (
    build_example,
    decode_completions,
    load_pretrained_tokenizer,
)
from cai_lightning.errors import ConfigError
from cai_lightning.kernels import CPU_SDPA, Dropout
from cai_lightning.model import CodeLM, context_length, warmup_cosine
from cai_lightning.prompts import format_prompt
from cai_lightning.settings import Generation
from conftest import save_tiny_gpt2, save_tiny_llama, tiny_bpe_tokenizer, tiny_code_lm


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_bpe_tokenizer()


def test_pretrained_path_adds_pad_and_resizes_embeddings(tmp_path):
    path = save_tiny_gpt2(tmp_path / "tiny-gpt2")
    tokenizer = load_pretrained_tokenizer(str(path))
    assert tokenizer.pad_token == "[PAD]" and tokenizer.pad_token_id == 400 != tokenizer.eos_token_id
    module = CodeLM(pretrained=str(path))
    module.connect(tokenizer)
    module.configure_model()
    assert type(module.model) is GPT2LMHeadModel  # GPT-2 keeps its own class, not the auto class
    rows = module.model.get_input_embeddings().num_embeddings
    assert rows >= len(tokenizer) == 401 and rows % 64 == 0
    assert module.model.config.pad_token_id == 400
    assert module.model.generation_config.eos_token_id == tokenizer.eos_token_id


def test_unloadable_pretrained_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="could not load tokenizer"):
        load_pretrained_tokenizer(str(tmp_path / "nowhere"))


def test_contradictory_settings_are_rejected_naming_the_flag():
    with pytest.raises(ConfigError, match="num_return_sequences"):
        Generation(num_beams=2, num_return_sequences=3)
    with pytest.raises(ConfigError, match="model.n_embd"):
        CodeLM(n_embd=30, n_head=4)


def test_parameters_change_after_one_step_and_loss_is_on_targets_only(tokenizer):
    module = tiny_code_lm(tokenizer)
    ids = tokenizer("def f(x):\n    return x\n", add_special_tokens=False)["input_ids"]
    batch = {
        "input_ids": torch.tensor([ids]),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        "labels": torch.tensor([[-100] * 3 + ids[3:]]),
    }
    before = [p.detach().clone() for p in module.model.parameters()]
    optimizer = torch.optim.AdamW(module.model.parameters(), lr=1e-2)
    loss = module._loss_and_metrics(batch, "train")
    loss.backward()
    optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, module.model.parameters()) if b.grad is not None)
    assert sum(p.grad is not None for p in module.model.parameters()) == len(before)
    # all-masked labels contribute nothing (and no NaN)
    batch["labels"][:] = -100
    assert module._loss_and_metrics(batch, "val").item() == 0.0


def _padded_batch(tokenizer):
    long = tokenizer("def f(x):\n    return x + 1\n", add_special_tokens=False)["input_ids"]
    short = tokenizer("x = 1\n", add_special_tokens=False)["input_ids"]
    return PadCollator(tokenizer.pad_token_id)(
        [{"input_ids": long, "labels": [-100] * 3 + long[3:]}, {"input_ids": short, "labels": [-100] + short[1:]}]
    )


def test_from_config_network_uses_exact_gelu_and_no_attention_dropout_by_default(tokenizer):
    config = CodeLM(dropout=0.2).hparams
    assert config.attention_dropout == 0.0 and config.compile is False
    module = CodeLM(n_layer=1, n_head=2, n_embd=32, n_positions=128, dropout=0.2)
    module.connect(tokenizer)
    module.configure_model()
    config = module.model.config
    assert config.activation_function == "gelu"
    assert config.resid_pdrop == config.embd_pdrop == 0.2 and config.attn_pdrop == 0.0
    x = torch.linspace(-6, 6, 101)  # within 1e-3 of GPT-2's tanh approximation (gelu_new)
    assert torch.allclose(ACT2FN["gelu"](x), ACT2FN["gelu_new"](x), atol=1e-3)


def test_every_dropout_of_the_network_draws_its_mask_from_uniforms(tokenizer):
    module = tiny_code_lm(tokenizer, dropout=0.2)
    dropouts = [m for m in module.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(dropouts) == 4 and all(type(m) is Dropout for m in dropouts)  # embeddings, attention, 2 residuals
    assert sorted(m.p for m in dropouts) == [0.0, 0.2, 0.2, 0.2]


def test_cpu_sdpa_in_the_model_matches_sdpa_and_saves_as_sdpa(tokenizer, tmp_path):
    module = tiny_code_lm(tokenizer).eval()
    assert module.model.config._attn_implementation == CPU_SDPA
    batch = _padded_batch(tokenizer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = module._loss_and_metrics(batch, "val")
        module.model.set_attn_implementation("sdpa")
        stock = module._loss_and_metrics(batch, "val")
    assert abs(ours.item() - stock.item()) < 0.02
    module.model.save_pretrained(tmp_path)
    assert CPU_SDPA not in (tmp_path / "config.json").read_text()  # an export loads with transformers' sdpa


def test_loss_is_the_shifted_mean_over_targets_in_fp32_and_bf16_autocast(tokenizer):
    module = tiny_code_lm(tokenizer).eval()
    batch = _padded_batch(tokenizer)
    loss = module._loss_and_metrics(batch, "val")
    # Hugging Face's own loss shifts the logits instead of the labels: the same mean over target tokens
    reference = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert loss.dtype == torch.float32 and torch.allclose(loss, reference, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = module._loss_and_metrics(batch, "val")
    assert mixed.dtype == torch.float32 and abs(mixed.item() - loss.item()) < 0.05  # bf16 logits, fp32 loss
    module.model.to(torch.bfloat16)  # bf16-true: no autocast to upcast, the loss still sums in fp32
    assert module._loss_and_metrics(batch, "val").dtype == torch.float32


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_head_on_target_positions_only_gives_the_full_forwards_loss_accuracy_and_gradients(tokenizer, tmp_path, architecture):
    if architecture == "gpt2":
        module = tiny_code_lm(tokenizer)
    else:  # a pretrained Llama (SmolLM2's family): tied embeddings, grouped-query attention
        path = save_tiny_llama(tmp_path / "llama")
        tokenizer = load_pretrained_tokenizer(str(path))
        module = CodeLM(pretrained=str(path))
        module.connect(tokenizer)
        module.configure_model()
    assert module._plain_head
    batch = _padded_batch(tokenizer)
    figures = []
    for plain_head in (True, False):
        module._plain_head = plain_head
        module.model.zero_grad()
        loss = module._loss_and_metrics(batch, "val")
        loss.backward()
        accuracy = module.metrics["val_acc"].compute().item()
        module.metrics["val_acc"].reset()
        figures.append((loss.item(), accuracy, [p.grad.clone() for p in module.model.parameters()]))
    (loss, accuracy, grads), (full_loss, full_accuracy, full_grads) = figures
    assert loss == pytest.approx(full_loss, abs=1e-6) and accuracy == full_accuracy
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, full_grads))


def test_training_accuracy_only_on_logged_steps(tokenizer):
    module = tiny_code_lm(tokenizer)
    counted = []
    update = module.metrics["train_acc"].update
    module.metrics["train_acc"].update = lambda *args: (counted.append(module.global_step), update(*args))[1]
    batches = [_padded_batch(tokenizer)] * 5
    trainer = pl.Trainer(
        max_epochs=1, log_every_n_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))  # batches as they are
    assert counted == [0, 2, 4]  # batches 0, 2, 4 of 5
    module._loss_and_metrics(batches[0], "val")  # validation always measures it
    assert module.metrics["val_acc"].update_count == 1


@pytest.mark.slow
def test_compiled_forward_gives_the_eager_loss_and_keeps_one_copy_of_the_weights(tokenizer):
    batch = _padded_batch(tokenizer)
    eager = tiny_code_lm(tokenizer).eval()
    compiled = tiny_code_lm(tokenizer, compile=True).eval()
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # no _orig_mod.* twins in checkpoints
    assert torch.allclose(compiled._loss_and_metrics(batch, "val"), eager._loss_and_metrics(batch, "val"), atol=1e-5)


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_bf16_mixed_clips_gradients_with_the_fused_adamw(tokenizer, algorithm):
    """Lightning's mixed-precision plugin refuses to clip for a fused optimizer (Lightning #21435), which
    bf16-mixed, with no gradient scaler, does not need: the default config's precision on a bf16 CPU."""
    module = tiny_code_lm(tokenizer)
    clip, seen = 1e-3, []

    class AfterStep(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            grads = torch.cat([p.grad.flatten() for p in pl_module.parameters() if p.grad is not None])
            seen.append(grads.abs().max() if algorithm == "value" else torch.linalg.vector_norm(grads))

    trainer = pl.Trainer(
        precision="bf16-mixed", gradient_clip_val=clip, gradient_clip_algorithm=algorithm, max_steps=2,
        limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[AfterStep()],
    )
    trainer.fit(module, train_dataloaders=DataLoader([_padded_batch(tokenizer)] * 2, batch_size=None))
    assert trainer.optimizers[0].param_groups[0]["fused"]
    assert len(seen) == 2 and all(value <= clip * 1.001 for value in seen)  # unclipped, the norm is ~1


def test_weight_decay_groups_exclude_biases_and_layernorm(tokenizer):
    module = tiny_code_lm(tokenizer)

    class FakeTrainer:
        estimated_stepping_batches = 100
        precision = "bf16-mixed"

    module._trainer = FakeTrainer()
    config = module.configure_optimizers()
    decay, no_decay = config["optimizer"].param_groups
    assert decay["fused"] and no_decay["fused"]  # one fused AdamW kernel on CPU
    FakeTrainer.precision = "16-mixed"  # the GradScaler's unscaling inside a fused step: Lightning won't clip then
    assert not module.configure_optimizers()["optimizer"].param_groups[0]["fused"]
    names = {id(p): n for n, p in module.model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(names[id(p)].endswith("weight") and p.dim() == 2 for p in decay["params"])
    assert any("ln_" in names[id(p)] for p in no_decay["params"]) and any(names[id(p)].endswith("bias") for p in no_decay["params"])
    assert config["lr_scheduler"]["interval"] == "step"


def test_warmup_cosine_schedule():
    f = warmup_cosine(total_steps=110, warmup_steps=10, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.55)
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) - 1e-12 for s in range(10, 200))


def test_generation_returns_completions_only_and_left_padding_does_not_change_them(tokenizer):
    module = tiny_code_lm(tokenizer, generation=Generation(num_beams=3, num_return_sequences=2, max_new_tokens=12))
    module.eval()
    prompts = [format_prompt("Write a function add_1(x) that returns x plus 1."), format_prompt("Add.", "x = 3")]
    together = module.complete(prompts)
    assert len(together) == 2 and all(len(c) == 2 for c in together)
    alone = [module.complete([p])[0] for p in prompts]
    assert together == alone  # the shorter prompt was left-padded in the batch
    assert all("### Instruction" not in text for completions in together for text in completions)  # prompt stripped


def test_seeded_samples_of_a_prompt_do_not_depend_on_the_prompts_beside_it(tokenizer):
    sampling = Generation(num_beams=1, num_return_sequences=3, do_sample=True, temperature=1.0, top_p=0.95, max_new_tokens=10)
    module = tiny_code_lm(tokenizer, generation=sampling)
    module.eval()
    prompts = [format_prompt("Write a function add_1(x) that returns x plus 1."), format_prompt("Add.", "x = 3"),
               format_prompt("Reverse a string.")]
    together = module.complete(prompts, seeds=[11, 22, 33])
    alone = [module.complete([p], seeds=[seed])[0] for p, seed in zip(prompts, (11, 22, 33))]
    reordered = module.complete(prompts[::-1], seeds=[33, 22, 11])[::-1]
    assert together == alone == reordered and all(len(c) == 3 for c in together)
    assert len({c for completions in together for c in completions}) > 3  # samples, not one greedy reply
    assert module.complete(prompts[:1], seeds=[12]) != together[:1]  # another seed, other samples


def _script_replies(module, text):
    """Make the model write ``text`` token by token (greedy), whatever it is asked: a hook on the LM head
    favours the next of ``text``'s tokens at each forward pass (the first pass reads the prompt)."""
    target = module.tokenizer(text, add_special_tokens=False)["input_ids"]
    step = [0]

    def favour(_module, _input, logits):
        bias = torch.zeros(logits.size(-1))
        bias[target[min(step[0], len(target) - 1)]] = 1e4
        step[0] += 1
        return logits + bias

    module.model.lm_head.register_forward_hook(favour)
    return step


def test_a_reply_can_stop_at_the_end_of_its_fenced_code_block(tokenizer):
    from cai_lightning.constitution.prompts import extract_code

    reply = "Here:\n```python\nx = 1\n```\nThat sets x to 1, and more words follow"
    greedy = Generation(num_beams=1, max_new_tokens=40)
    module = tiny_code_lm(tokenizer, generation=greedy)
    module.eval()
    _script_replies(module, reply)
    [[whole]] = module.complete([format_prompt("Set x.")])
    module = tiny_code_lm(tokenizer, generation=greedy)
    module.eval()
    step = _script_replies(module, reply)
    [[stopped]] = module.complete([format_prompt("Set x.")], stop_after_code_block=True)
    assert stopped == "Here:\n```python\nx = 1\n```" and whole.startswith(stopped + "\nThat sets x")
    assert step[0] < len(module.tokenizer(reply, add_special_tokens=False)["input_ids"])  # fewer forward passes
    assert extract_code(stopped) == extract_code(whole) == "x = 1\n"


def test_fenced_block_end_marks_only_rows_with_a_closed_block(tokenizer):
    from cai_lightning.generation import FencedBlockEnd

    prompt = tokenizer("### Instruction:\nSet x.\n", add_special_tokens=False)["input_ids"]
    replies = ["```python\nx = 1\n```", "```python\nx = 1\n", "no code at all ```", "```py\ny = 2\n``` and on"]
    rows = [prompt + tokenizer(r, add_special_tokens=False)["input_ids"] for r in replies]
    width = max(map(len, rows))
    ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in rows])
    stop = FencedBlockEnd(tokenizer, len(prompt))
    assert stop(ids, None).tolist() == [True, False, False, True]
    assert stop(ids[:, : len(prompt)], None).tolist() == [True, False, False, True]  # finished stays finished


def _spy_on_generate(module):
    calls = []
    original = module.model.generate

    def spy(**kwargs):
        out = original(**kwargs)
        calls.append((kwargs, kwargs["input_ids"].shape, out.shape))
        return out

    module.model.generate = spy
    return calls


def _spy_on_decode(monkeypatch):
    """Calls of generation.decode from CodeLM.generate: (its keyword arguments, longest prompt, outputs)."""
    import cai_lightning.model as model_module

    calls, original = [], model_module.decode

    def spy(model, prompts, **kwargs):
        out = original(model, prompts, **kwargs)
        calls.append((kwargs, max(map(len, prompts)), out))
        return out

    monkeypatch.setattr(model_module, "decode", spy)
    return calls


def test_generation_respects_the_position_table(tokenizer, monkeypatch):
    module = tiny_code_lm(tokenizer, generation=Generation(num_beams=1, max_new_tokens=500))
    module.eval()
    calls = _spy_on_decode(monkeypatch)
    module.complete([format_prompt("Add.")])
    [(kwargs, prompt_len, out)] = calls
    assert kwargs["max_new_tokens"] == 128 - prompt_len and prompt_len + max(map(len, out)) <= 128
    module.generation = Generation(num_beams=2, max_new_tokens=500)  # beam search: transformers' generate
    beams = _spy_on_generate(module)
    module.complete([format_prompt("Add.")])
    [(kwargs, (_, prompt_len), (_, total))] = beams
    assert kwargs["max_new_tokens"] == 128 - prompt_len and total <= 128


def test_max_new_tokens_and_max_length(tokenizer):
    module = tiny_code_lm(tokenizer, generation=Generation(num_beams=2, max_new_tokens=7))
    calls = _spy_on_generate(module)
    module.complete([format_prompt("Add.")])
    assert calls[-1][0]["max_new_tokens"] == 7 and calls[-1][2][1] <= calls[-1][1][1] + 7
    module.generation = Generation(num_beams=2, max_new_tokens=None, max_length=90)  # counts the prompt
    module.complete([format_prompt("Add.")])
    assert calls[-1][0]["max_new_tokens"] == 90 - calls[-1][1][1]


def test_decode_cuts_at_eos(tokenizer):
    ids = tokenizer("x = 1", add_special_tokens=False)["input_ids"]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    [[cut, padded]] = decode_completions(tokenizer, [ids + [eos] + ids + [pad], ids + [pad, pad]], n=2)
    assert cut == "x = 1"
    assert math.isclose(len(padded), 5)
    assert decode_completions(tokenizer, [ids, ids + [eos]], n=1) == [["x = 1"], ["x = 1"]]  # n per prompt


# ---------------------------------------------------------------- any causal LM: a tiny Llama (SmolLM2's layout)
@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


def _llama_module(llama_dir, **kwargs):
    tokenizer = load_pretrained_tokenizer(str(llama_dir))
    torch.manual_seed(0)
    module = CodeLM(pretrained=str(llama_dir), **kwargs)
    module.connect(tokenizer)
    module.configure_model()
    return module


def test_pad_equal_to_eos_gets_its_own_pad_and_eos_stays_a_label(llama_dir):
    tokenizer = load_pretrained_tokenizer(str(llama_dir))  # saved with pad == eos == <|im_end|> (id 2)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert tokenizer.pad_token == "[PAD]" and tokenizer.pad_token_id == 400 and len(tokenizer) == 401
    prompt = tokenizer(format_prompt("Add."), add_special_tokens=False)["input_ids"]
    target = tokenizer("x + 1", add_special_tokens=False)["input_ids"]
    short = build_example(prompt[:2], target[:1], tokenizer.eos_token_id, max_length=8)
    assert short == {"input_ids": [*prompt[:2], target[0], 2], "labels": [-100, -100, target[0], 2]}
    batch = PadCollator(tokenizer.pad_token_id)([short, build_example(prompt[:2], target[:3], 2, max_length=8)])
    assert batch["input_ids"][0].tolist() == [*prompt[:2], target[0], 2, 400, 400]  # padded with [PAD], not EOS
    assert batch["labels"][0].tolist() == [-100, -100, target[0], 2, -100, -100]  # EOS trained, padding not


def test_llama_loads_through_the_auto_class_in_fp32_with_tied_resized_embeddings(llama_dir):
    module = _llama_module(llama_dir)
    model = module.model
    assert type(model) is LlamaForCausalLM and model.training
    assert model.dtype == torch.float32  # saved in bf16: the master weights must not stay there
    embeddings = model.get_input_embeddings().weight
    assert embeddings.shape == (448, 32)  # 401 rounded up to a multiple of 64
    assert model.get_output_embeddings().weight.data_ptr() == embeddings.data_ptr()  # still tied
    assert model.config.pad_token_id == 400 and model.generation_config.eos_token_id == 2


def test_llama_generation_stops_on_eos(llama_dir, monkeypatch):
    module = _llama_module(llama_dir, generation=Generation(num_beams=1, max_new_tokens=12))
    module.eval()
    # Make EOS the certain next token: greedy decoding must then stop after one token, on EOS (not PAD).
    favour_eos = torch.zeros(448)
    favour_eos[2] = 100.0
    module.model.lm_head.register_forward_hook(lambda _module, _input, logits: logits + favour_eos)
    calls = _spy_on_decode(monkeypatch)
    completions = module.complete([format_prompt("Add."), format_prompt("Write a function add_1(x).")])
    [(kwargs, _, out)] = calls
    assert kwargs["eos_token_id"] == 2 and kwargs["pad_token_id"] == 400
    assert out == [[], []] and completions == [[""], [""]]  # ended on EOS, the first token


def test_llama_trains_under_cpu_bf16_autocast(llama_dir):
    module = _llama_module(llama_dir)
    tokenizer = module.tokenizer
    prompt = tokenizer(format_prompt("Add."), add_special_tokens=False)["input_ids"]
    target = tokenizer("def add(x):\n    return x + 1\n", add_special_tokens=False)["input_ids"]
    batch = PadCollator(tokenizer.pad_token_id)([build_example(prompt, target, 2, max_length=128)] * 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what trainer.precision=bf16-mixed does on a CPU
        loss = module._loss_and_metrics(batch, "train")
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    grads = [p.grad for p in module.model.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_context_length_reads_either_name():
    assert context_length(GPT2Config(n_positions=128)) == 128
    assert context_length(LlamaConfig(max_position_embeddings=256)) == 256


def test_llama_generation_respects_its_context_length(llama_dir, monkeypatch):
    module = _llama_module(llama_dir, generation=Generation(num_beams=1, max_new_tokens=500))
    module.eval()
    calls = _spy_on_decode(monkeypatch)
    module.complete([format_prompt("Add.")])
    [(kwargs, prompt_len, out)] = calls
    assert kwargs["max_new_tokens"] == 256 - prompt_len and prompt_len + max(map(len, out)) <= 256  # max_position_embeddings=256


def test_a_model_that_is_not_a_causal_lm_is_a_config_error(tmp_path, tokenizer):
    T5Config(vocab_size=300, d_model=32, d_ff=64, num_layers=1, num_heads=2).save_pretrained(tmp_path / "t5")
    module = CodeLM(pretrained=str(tmp_path / "t5"))
    module.connect(tokenizer)
    with pytest.raises(ConfigError, match="could not load model.pretrained=.*t5"):
        module.configure_model()
    with pytest.raises(ConfigError, match="model.pretrained='[^']*nowhere'"):  # named, whoever finds it missing
        CodeLM(pretrained=str(tmp_path / "nowhere"))._pretrained_config()


def test_checkpoint_of_another_network_is_refused(tokenizer):
    saved = {"state_dict": tiny_code_lm(tokenizer).state_dict()}  # n_embd=32
    wider = CodeLM(n_layer=1, n_head=2, n_embd=64, n_positions=128)
    wider.connect(tokenizer)
    wider.on_load_checkpoint(saved)  # not built yet: nothing to compare
    wider.configure_model()
    difference = r"model.lm_head.weight is \(300, 32\) in the checkpoint, \(300, 64\) here"
    with pytest.raises(ConfigError, match="another network .* " + difference):
        wider.on_load_checkpoint(saved)
    tiny_code_lm(tokenizer).on_load_checkpoint(saved)  # the same network loads
