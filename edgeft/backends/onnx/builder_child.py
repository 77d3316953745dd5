"""onnxruntime-genai's model builder, run as a child process, with one gap of its Gemma 3 reader filled.

Why: transformers 5 writes Gemma 3's rope settings per layer type
(`rope_parameters = {"full_attention": {...}, "sliding_attention": {...}}`), and the builder
(0.18) reads only the older flat form, so it stops on `KeyError: 'rope_type'` for every Gemma 3
folder transformers 5 saved, the ones edgeft writes included. Its Gemma 4 reader already handles
the nested form; here Gemma 3 gets the same reading: the global layers' base and scaling from
"full_attention", the sliding layers' base from "sliding_attention". Everything else is the
builder's own command line, unchanged:

    python -m edgeft.backends.onnx.builder_child -i MODEL -o OUT -p int4 -e cpu ...
"""

from __future__ import annotations

import runpy


def _read_nested_rope(self, config) -> None:
    params = config.rope_parameters
    full, local = params["full_attention"], params["sliding_attention"]
    for kind, p in (("full_attention", full), ("sliding_attention", local)):
        if p.get("rope_type", "default") not in ("default", "linear"):
            raise ValueError(f"Gemma 3 rope_parameters.{kind}.rope_type {p.get('rope_type')!r} is not supported")
    if local.get("rope_type", "default") == "linear" and local.get("factor", 1.0) != 1.0:
        raise ValueError("Gemma 3 rope_parameters.sliding_attention: linear scaling of the local layers is not supported")
    self.rope_attrs["theta"] = full["rope_theta"]
    if full.get("rope_type", "default") == "linear":
        self.rope_attrs["rescale_factors"] = full["factor"]
    config.rope_local_base_freq = local["rope_theta"]  # what the builder's Gemma 3 reads for the sliding layers


def patch() -> None:
    import importlib

    import onnxruntime_genai.models  # noqa: F401  (puts its folder on sys.path: the builder imports `builders.gemma` by that name)

    gemma = importlib.import_module("builders.gemma")

    original = gemma.Gemma3Model.make_rope_init

    def make_rope_init(self, config):
        params = getattr(config, "rope_parameters", None)
        if isinstance(params, dict) and "full_attention" in params and "sliding_attention" in params:
            return _read_nested_rope(self, config)
        return original(self, config)

    gemma.Gemma3Model.make_rope_init = make_rope_init


if __name__ == "__main__":
    patch()
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)
