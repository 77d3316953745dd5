"""ONNX task adapters (issue 18): a base graph whose LoRA weights are inputs, and `.onnx_adapter` files
that ONNX Runtime and onnxruntime-genai's Adapters API feed into it. On a tiny Llama 256 wide."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgeft.cli import main
from tiny_models import tiny_llama, tiny_profile, write_jsonl

pytest.importorskip("onnxruntime_genai")

IDS = list(range(5, 69))  # a 64-token prompt


def _adapter(base_dir, folder, *, seed: int, modules=("q_proj", "v_proj", "down_proj"), scale: float = 1.0):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(modules), lora_dropout=0.0))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05).mul_(scale)
    peft_model.save_pretrained(folder)
    return folder


def _merged_logits(base_dir, adapter_dir) -> np.ndarray:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload().eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([IDS])).logits[0].numpy()


@pytest.fixture(scope="module")
def onnx_adapter_base(tmp_path_factory):
    """A 256-wide tiny Llama, two adapters on it (q/v/down and all projections), and its fp32 and int4
    exports made to take them, with each adapter exported against the fp32 base."""
    from edgeft.backends.onnx.backend import OnnxBackend
    from edgeft.config import load_target

    tmp = tmp_path_factory.mktemp("onnx-adapters")
    base_dir = tiny_llama(tmp / "base", hidden=256)
    one = _adapter(base_dir, tmp / "one", seed=1)
    two = _adapter(base_dir, tmp / "two", seed=2, modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                             "down_proj"))
    backend = OnnxBackend()
    arts = {}
    for quant in ("fp32", "int4"):
        target = load_target(str(tiny_profile(tmp, backend="onnx", quant=quant, name=f"{quant}.toml")))
        ref = backend.reference(base_dir, target.with_overrides(quant="fp32"), tmp / "work", name="tiny")
        art = backend.compile(base_dir, target, tmp / "out", reference=ref, name="tiny")
        arts[quant], arts["ref"] = backend.adapter_base(art, ref, base_dir, [one, two], target)
    files = {name: backend.export_adapter(folder, base_dir, tmp / f"{name}.onnx_adapter", base=arts["fp32"])
             for name, folder in (("one", one), ("two", two))}
    return {"base_dir": base_dir, "peft": {"one": one, "two": two}, "files": files, **arts, "backend": backend, "tmp": tmp}


def _runner(artifact):
    from edgeft.backends.onnx.runner import OnnxRunner

    return OnnxRunner(artifact.path, threads=1, context=128)


def test_the_runtime_with_an_adapter_gives_the_merged_models_logits_and_without_it_the_bases(onnx_adapter_base):
    b = onnx_adapter_base
    runner = _runner(b["fp32"])
    try:
        base = runner.logits(IDS)
        runner.use_adapter(b["files"]["one"])
        one = runner.logits(IDS)
        runner.use_adapter(b["files"]["two"])
        two = runner.logits(IDS)
        runner.use_adapter(None)
        again = runner.logits(IDS)
    finally:
        runner.close()
    want_base = _merged_logits(b["base_dir"], None)
    want_one, want_two = (_merged_logits(b["base_dir"], b["peft"][n]) for n in ("one", "two"))
    assert np.abs(base - want_base).max() < 1e-3 and np.array_equal(base, again)
    assert np.abs(one - want_one).max() < 1e-3
    assert np.abs(two - want_two).max() < 1e-3
    # switching adapters changes the outputs, far beyond the match above
    assert np.abs(one - base).max() > 0.1 and np.abs(two - one).max() > 0.1


def test_onnxruntime_genai_loads_and_switches_the_same_files(onnx_adapter_base):
    """What an app runs: onnxruntime-genai's Adapters API on the shipped folder gives the logits our
    runner gives, with each adapter active and with none."""
    import onnxruntime_genai as og

    b = onnx_adapter_base
    model = og.Model(str(b["fp32"].path))
    adapters = og.Adapters(model)
    for name, path in b["files"].items():
        adapters.load(str(path), name)
    runner = _runner(b["fp32"])
    try:
        for name in (None, "one", "two"):
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=len(IDS) + 4)
            generator = og.Generator(model, params)
            if name is not None:
                generator.set_active_adapter(adapters, name)
            generator.append_tokens(IDS)
            genai_last = np.asarray(generator.get_logits())[0, -1]
            runner.use_adapter(b["files"][name] if name else None)
            ours_last = runner.logits(IDS)[-1]
            assert np.abs(genai_last - ours_last).max() < 1e-3, name
            del generator
    finally:
        runner.close()


def test_the_quantized_base_keeps_fp32_lora_inputs_and_generate_applies_the_adapter(onnx_adapter_base):
    """At int4 the projections are MatMulNBits, the LoRA branches plain MatMuls on graph inputs; greedy
    decoding with the KV cache (IO binding) applies the adapter as the full forward pass does."""
    import onnx

    from edgeft.backends.onnx import adapters

    b = onnx_adapter_base
    graph = onnx.load(str(b["int4"].path / "model.onnx"), load_external_data=False).graph
    lora = [n for n in graph.node if "/lora_" in n.name]
    assert lora and all(n.op_type == "MatMul" for n in lora)
    assert any(n.op_type == "MatMulNBits" for n in graph.node)
    assert len(adapters.lora_inputs(b["int4"].path / "model.onnx")) == 2 * 2 * 7  # 2 layers x 7 projections
    one = b["backend"].export_adapter(b["peft"]["one"], b["base_dir"], b["tmp"] / "one-int4.onnx_adapter", base=b["int4"])
    runner = _runner(b["int4"])
    try:
        plain = runner.generate(IDS[:16], 12).tokens
        runner.use_adapter(one)
        tokens = runner.generate(IDS[:16], 12).tokens
        forced = runner.logits(IDS[:16] + tokens[:-1])[15:].argmax(-1).tolist()
    finally:
        runner.close()
    assert tokens == forced
    assert tokens != plain


def test_an_adapter_for_another_base_or_other_modules_is_refused(onnx_adapter_base, tmp_path):
    from edgeft.backends.onnx import adapters
    from edgeft.errors import ArtifactError

    b = onnx_adapter_base
    with pytest.raises(ArtifactError, match="exported for another base"):
        b["backend"].check_adapter(b["files"]["one"], b["int4"])
    b["backend"].check_adapter(b["files"]["one"], b["fp32"])
    # a base exported without LoRA inputs for MLP projections refuses an adapter on down_proj
    inputs = {k: v for k, v in adapters.lora_inputs(b["fp32"].path / "model.onnx").items() if ".attn." in k}
    values = adapters.peft_tensors(b["peft"]["one"])
    name = next(k for k in values if "down_proj" in k)
    with pytest.raises(ArtifactError, match="no input for"):
        adapters.check_shape(name, values[name].shape, inputs, file=tmp_path)
    with pytest.raises(ArtifactError, match="not an ONNX Runtime adapter file"):
        adapters.read(write_jsonl(tmp_path / "x.onnx_adapter", [{"a": 1}]))


def _prefix(base_dir, folder, *, seed: int, tokens: int = 8):
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=tokens))
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.normal_(0, 1.0)
    peft_model.save_pretrained(folder)
    return folder, peft_model.eval()


def test_a_prefix_seeded_as_the_kv_cache_gives_the_peft_models_logits(onnx_adapter_base):
    """Prefix tuning on ONNX: the learned prefix, exported as past_key_values, seeded by the runner,
    gives the peft prefix model's logits (full pass and KV-cached greedy decoding alike)."""
    from edgeft.errors import ArtifactError

    b = onnx_adapter_base
    folder, peft_model = _prefix(b["base_dir"], b["tmp"] / "prefix", seed=3)
    path = b["backend"].export_adapter(folder, b["base_dir"], b["tmp"] / "p.prefix.safetensors", base=b["fp32"])
    b["backend"].check_adapter(path, b["fp32"])
    with pytest.raises(ArtifactError, match="exported for another base"):
        b["backend"].check_adapter(path, b["int4"])
    with torch.no_grad():
        want = peft_model(input_ids=torch.tensor([IDS])).logits[0].numpy()
    runner = _runner(b["fp32"])
    try:
        base = runner.logits(IDS)
        runner.use_adapter(path)
        got = runner.logits(IDS)
        tokens = runner.generate(IDS[:16], 10).tokens
        forced = runner.logits(IDS[:16] + tokens[:-1])[15:].argmax(-1).tolist()
        runner.use_adapter(None)
        assert np.array_equal(runner.logits(IDS), base)
    finally:
        runner.close()
    assert np.abs(got - want).max() < 1e-3
    assert np.abs(got - base).max() > 0.1
    assert tokens == forced


def test_bench_refuses_a_prefix_whose_positions_leave_no_room_for_the_timed_prompt(onnx_adapter_base, tmp_path):
    """16 prompt + 8 new tokens fit a 30-token context, but not beside an 8-position prefix: one line, exit 2,
    before any benchmarking (it used to end in an internal error inside the worker)."""
    from edgeft.backends.onnx.adapters import prefix_positions

    b = onnx_adapter_base
    folder, _ = _prefix(b["base_dir"], b["tmp"] / "prefix-room", seed=4)
    path = b["backend"].export_adapter(folder, b["base_dir"], tmp_path / "p.prefix.safetensors", base=b["fp32"])
    assert prefix_positions(path) == 8 and prefix_positions(b["files"]["one"]) == 0
    profile = tiny_profile(tmp_path, backend="onnx", quant="fp32", context=30)
    r = CliRunner().invoke(main, ["bench", str(b["fp32"].path), "--target", str(profile), "--adapter", str(path)])
    assert r.exit_code == 2, r.output
    assert "takes 8 positions before every sequence" in r.output and "exceed context 30" in r.output
    assert "Traceback" not in r.output
    # With room for it, the prefix also leaves the perplexity windows room: they shrink by its 8 positions.
    roomy = tiny_profile(tmp_path, backend="onnx", quant="fp32", context=40, name="roomy.toml")
    r = CliRunner().invoke(main, ["--quiet", "bench", str(b["fp32"].path), "--target", str(roomy), "--adapter", str(path),
                                  "--json", str(tmp_path / "b.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "b.json").read_text())["eval"]["window"] == 32


def test_the_training_loop_puts_the_prefix_where_peft_does(tiny_llama_dir):
    """target_logits (what the loss and the eval read) on a prefix model equals peft's own forward."""
    from edgeft.distill.logits import target_logits

    from peft import PrefixTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(4)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32),
                                PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6)).eval()
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.normal_(0, 1.0)
    ids = torch.tensor([IDS[:20], IDS[20:40]])
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0  # right padding, as collate writes it
    targets = ids.clone()
    targets[mask == 0] = -100
    with torch.no_grad():
        got, _ = target_logits(peft_model, {"input_ids": ids, "attention_mask": mask, "targets": targets})
        want = peft_model(input_ids=ids, attention_mask=mask).logits[targets != -100]
    assert torch.allclose(got, want, atol=1e-4)


def test_a_gguf_prefix_build_is_one_line(tmp_path):
    from edgeft.tasks import examples

    data = write_jsonl(tmp_path / "intent.jsonl", examples.task_rows("intent", 10))
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["build", "--no-distill", "--model", "default", "--target", "gguf", "--out", str(out),
                                  "--task", f"intent={data}", "--method", "prefix"])
    assert r.exit_code == 2, r.output
    assert "cannot ship prefix-tuned tasks: llama.cpp has no prefix adapters" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not out.exists()


def test_a_weighed_int4_base_is_exported_again_only_with_the_importance_file_it_was_rounded_by(tmp_path):
    """Adding LoRA inputs exports the base again; it must be rounded as the compiled one was. The folder's
    marker keeps the importance file's digest, not its path: with no file, or another, the base is
    refused before anything is written; with its own, it is rounded again."""
    from edgeft import importance
    from edgeft.backends.onnx.backend import OnnxBackend
    from edgeft.config import load_target
    from edgeft.errors import ArtifactError

    base_dir = tiny_llama(tmp_path / "base", hidden=256)
    adapter = _adapter(base_dir, tmp_path / "one", seed=1)
    files = {}
    for name, rows in (("right", [[5, 9, 40, 7, 3] * 4, [11, 12, 13] * 5]), ("other", [[60, 61, 62] * 6])):
        records = write_jsonl(tmp_path / f"{name}.jsonl", [{"input_ids": r, "attention_mask": [1] * len(r)} for r in rows])
        files[name] = tmp_path / name / importance.FILE
        importance.collect(base_dir, records, files[name])
    target = load_target(str(tiny_profile(tmp_path, backend="onnx", quant="int4", name="int4.toml")))
    backend = OnnxBackend()
    ref = backend.reference(base_dir, target.with_overrides(quant="fp32"), tmp_path / "work", name="tiny")
    art = backend.compile(base_dir, target, tmp_path / "out", reference=ref, name="tiny", importance=files["right"])
    marker = json.loads((art.path / "edgeft_export.json").read_text())["importance"]
    assert "file" not in marker and str(tmp_path) not in json.dumps(marker) and len(marker["sha256"]) == 64

    before = {p.name: p.read_bytes() for p in (*art.path.iterdir(), *ref.path.iterdir())}
    for given in (None, files["other"]):
        with pytest.raises(ArtifactError, match="rounded weighing importance") as err:
            backend.adapter_base(art, ref, base_dir, [adapter], target, importance=given)
        assert str(art.path) in str(err.value)
    assert {p.name: p.read_bytes() for p in (*art.path.iterdir(), *ref.path.iterdir())} == before  # nothing written

    new, _ = backend.adapter_base(art, ref, base_dir, [adapter], target, importance=files["right"])
    again = json.loads((new.path / "edgeft_export.json").read_text())["importance"]
    # (with LoRA on q and v the builder writes q, k and v apart, so more tensors than the fused export)
    assert again["sha256"] == marker["sha256"] and again["rewritten"] >= marker["rewritten"] > 0 and again["left"] == 0


@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_an_onnx_task_build_ships_the_base_and_adapters_and_proves_them(tmp_path, method):
    """`build --target <onnx profile> --task ... [--method prefix]`: one base folder, one adapter file per
    task in the manifest, and the bench's proof on the fp32 reference."""
    from edgeft.tasks import examples

    base_dir = tiny_llama(tmp_path / "base", hidden=256, positions=512)  # room for the prefix before each record
    data = write_jsonl(tmp_path / "intent.jsonl", examples.task_rows("intent", 40))
    profile = tiny_profile(tmp_path, backend="onnx", quant="int4", context=512, name="onnx-int4.toml")
    out = tmp_path / "out"
    extra = ["--task-modules", "intent=attention"] if method == "lora" else ["--method", "prefix"]
    r = CliRunner().invoke(main, ["build", "--no-distill", "--model", str(base_dir), "--target", str(profile), "--out",
                                  str(out), "--task", f"intent={data}", *extra])
    assert r.exit_code == 0, r.output
    name = "intent.onnx_adapter" if method == "lora" else "intent.prefix.safetensors"
    manifest = json.loads((out / "manifest.json").read_text())
    paths = {o["path"] for o in manifest["outputs"]}
    assert f"adapters/{name}" in paths and "model-onnx-int4/model.onnx" in paths
    assert manifest["stages"]["tasks"]["adapters"][0]["adapter_type"] == method
    # the int4 base is rounded weighing the importance file, also when LoRA needs it exported again
    shipped = json.loads((out / "model-onnx-int4" / "edgeft_export.json").read_text())
    assert shipped["importance"]["rewritten"] > 0 and shipped["importance"]["left"] == 0, shipped
    assert str(tmp_path) not in json.dumps(shipped), shipped  # the folder ships: no path of the build machine in it
    assert manifest["stages"]["compile"]["importance"].startswith("rounding weighed"), manifest["stages"]["compile"]
    row = json.loads((out / "bench.json").read_text())["tasks"]["tasks"][0]
    assert row["proof"]["matches"] and row["proof"]["applied"], row["proof"]
    assert row["adapter_bytes"] == (out / "adapters" / name).stat().st_size


def test_a_prefix_started_from_text_is_the_base_having_read_that_text(tiny_llama_dir):
    """init_prefix: the fresh prefix holds the base's keys and values for the first tokens of a record,
    so the prefix model on any text gives the base's logits on those tokens followed by that text."""
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from edgeft.distill.qlora import init_prefix

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        want = base(input_ids=torch.tensor([IDS[:6] + IDS[30:50]])).logits[0, 6:]
    peft_model = get_peft_model(base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6)).eval()
    init_prefix(peft_model, IDS[:40])
    with torch.no_grad():
        got = peft_model(input_ids=torch.tensor([IDS[30:50]])).logits[0]
    assert torch.allclose(got, want, atol=1e-4)
