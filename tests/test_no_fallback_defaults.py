"""Workers read a validated, fully defaulted JobSpec: no trainer restates a default of its own.

Two checks: a scan of trainers/ for ``.get(key, default)`` (and ``getattr(x, key, default)``)
on spec-like receivers, and loops built from a plain partial dict, one per architecture,
whose every spec-driven setting must be the JobSpec model's default. Before the spec moved to
trainers/spec.py, loss.py read ``self.t.get("style_mixing", 0.0)`` while the model said 0.9.
"""
from __future__ import annotations

import ast

import pytest
import torch

from conftest import ROOT
from trainers.loop import GanLoop
from trainers.loss import GanLoss
from trainers.spec import ARCHES, JobSpec, PreemptionSpec, TrainSpec

pytestmark = pytest.mark.usefixtures("private_cache")
# Names a spec, one of its sections or a generator config goes by in trainers/.
SPEC_NAMES = {"spec", "t", "m", "train", "model", "ev", "eval", "p", "preemption", "data", "scaling", "checkpoint",
              "registry", "config"}
# Ray Train's train_loop_config is a dict whose `control` entry is really optional: `config.get("control")`.
OPTIONAL_KEYS_OK = {"config"}


def _names(node: ast.AST) -> set[str]:
    """Every name, attribute and string subscript in an expression: `self.spec["train"]` -> self, spec, train."""
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
        elif isinstance(n, ast.Constant) and isinstance(n.value, str):
            out.add(n.value)
    return out


def fallback_reads(source: str, filename: str = "<string>") -> list[str]:
    """`file:line code` of each read of a spec-like value that supplies its own default: `.get(key, default)`,
    `getattr(obj, key, default)`, or `.get(key)` (a None default) on a spec or one of its sections."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            receiver, has_default = node.func.value, len(node.args) >= 2 or bool(node.keywords)
        elif isinstance(node.func, ast.Name) and node.func.id == "getattr" and len(node.args) == 3:
            receiver, has_default = node.args[0], True
        else:
            continue
        spec_like = _names(receiver) & SPEC_NAMES
        if spec_like and (has_default or spec_like - OPTIONAL_KEYS_OK):
            found.append(f"{filename}:{node.lineno} {ast.get_source_segment(source, node)}")
    return found


def test_the_scan_catches_the_style_mixing_drift_and_passes_plain_dicts():
    old_loss = 'prob = self.t.get("style_mixing", 0.0)\ndo = t.get("pl_weight", 0) > 0\n'
    old_loop = ('conditional = m.get("conditioning", "none") != "none"\np = spec.get("preemption", {})\n'
                'want = spec["data"].get("resolution")\nevery = (self.spec.get("eval") or {}).get("every_steps")\n'
                'cap = getattr(model, "channels_max", 512)\n')
    assert len(fallback_reads(old_loss)) == 2
    assert len(fallback_reads(old_loop)) == 6  # the last line holds two
    fine = ('x = os.environ.get("GANRAY_X", "1")\nsums[k] = sums.get(k, 0) + v\nc = config.get("control")\n'
            'j = self.index.get(tag)\nr = state.get("g_ema")\n')
    assert fallback_reads(fine) == []


def test_no_trainer_reads_a_spec_value_with_a_fallback():
    found = []
    for path in sorted((ROOT / "trainers").rglob("*.py")):
        found += fallback_reads(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, "read these from the validated spec (trainers/spec.py), without a default:\n" + "\n".join(found)


@pytest.mark.parametrize("arch", ARCHES)
def test_a_loop_from_a_partial_dict_runs_on_the_models_defaults(dataset, arch):
    raw = {"name": "partial", "data": {"url": dataset}, "model": {"arch": arch}}
    loop = GanLoop(raw)
    want, t, p = JobSpec.model_validate(raw), TrainSpec(), PreemptionSpec()
    m = want.model
    assert loop.spec == want and loop.loss.t == t and loop.loss.t.style_mixing == 0.9
    assert loop.batch == t.batch_size and loop.rounds == 1 and [ph.name for ph in loop.phases] == ["Dmain", "Gmain"]
    for opt, lr in ((loop.opt_d, t.lr_d), (loop.opt_g, t.lr_g)):
        assert opt.param_groups[0]["lr"] == lr and opt.param_groups[0]["betas"] == (t.beta1, t.beta2)
    assert (loop.g_ema is not None) == t.ema and loop.augment is None and t.augment == "none"
    assert not loop.scaler_g.is_enabled() and t.precision == "fp32" and loop.evaluator is None
    assert (loop.preemption.check_every_s, loop.preemption.margin_s) == (p.check_every_s, p.margin_s)
    cfg = loop.g.config
    assert (cfg["z_dim"], cfg["channels"], cfg["channels_max"]) == (m.z_dim, m.channels, m.channels_max)
    if arch == "cond-dcgan":
        assert cfg["embed_dim"] == m.embed_dim == loop.g.embed.out_features and m.conditioning == "tags"
    if arch == "stylegan2":
        assert cfg["mapping_layers"] == m.mapping_layers == len(loop.g.mapping.layers)
        assert cfg["w_dim"] == m.z_dim and loop.d.mbstd_group == m.mbstd_group
    loop.stream.close()


def test_stylegan2_mixes_styles_at_the_models_rate(dataset):
    """Behaviour, not just the attribute: G's mapping runs a second time in about 0.9 of the calls."""
    loop = GanLoop({"name": "partial", "data": {"url": dataset},
                    "model": {"arch": "stylegan2", "z_dim": 8, "channels": 4, "channels_max": 16}})
    loop.stream.close()
    calls = []
    loop.g.mapping.register_forward_hook(lambda *_: calls.append(1))
    loss = GanLoss(loop.g, loop.d, TrainSpec(), torch.Generator().manual_seed(0))
    with torch.no_grad():
        for _ in range(100):
            loss.run_G(torch.randn(2, 8), None)
    mixed = len(calls) - 100
    assert 80 <= mixed <= 98, mixed  # binomial(100, 0.9): a default of 0.0 would give 0
