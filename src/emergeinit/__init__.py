"""emergeinit: the emergence-promoting initialization of Li, George & Silva, for any PyTorch model.

Measure a network's emergence (paths from inactive to active nodes, eq 1/2/12), initialize a model
with the method (eq 8), choose α, and compare against the usual baselines. Names are loaded on
first use, so ``import emergeinit`` stays cheap and the harness's extra dependencies are only
imported by the harness.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict, List

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: Dict[str, str] = {
    # layers
    "WeightLayer": "emergeinit.layers",
    "find_weight_layers": "emergeinit.layers",
    "find_blocks": "emergeinit.layers",
    "register_weight_layer": "emergeinit.layers",
    # emergence (eq 1, 2, 12) and its measurement on models
    "layered_emergence": "emergeinit.emergence",
    "lemma_pivot": "emergeinit.emergence",
    "exact_pivot": "emergeinit.emergence",
    "graph_emergence": "emergeinit.emergence",
    "LayerGraph": "emergeinit.emergence",
    "layer_graph": "emergeinit.probe",
    "measure_emergence": "emergeinit.probe",
    "EmergenceReport": "emergeinit.probe",
    "LayerActivity": "emergeinit.probe",
    # the initialization (eq 8) and α rules
    "emergence_init_": "emergeinit.init",
    "plan_emergence": "emergeinit.plan",
    "apply_plan_": "emergeinit.init",
    "InitPlan": "emergeinit.plan",
    "PlannedLayer": "emergeinit.plan",
    "tfixup_init_": "emergeinit.init",
    "encoder_decoder_init_": "emergeinit.init",
    "alpha_for_lr": "emergeinit.schedules",
    "auto_alpha": "emergeinit.tuning",
    "choose_init": "emergeinit.auto",
    "auto_init_": "emergeinit.auto",
    "Candidate": "emergeinit.auto",
    "InitChoice": "emergeinit.auto",
    "layerwise_lr_groups": "emergeinit.tuning",
    # baselines, one API
    "initialize": "emergeinit.baselines",
    "NonFiniteError": "emergeinit.trace",
    "UnrepresentableError": "emergeinit.plan",
    "check_options": "emergeinit.baselines",
    "InitRecord": "emergeinit.baselines",
}

__all__: List[str] = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'emergeinit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return __all__


if TYPE_CHECKING:  # static names for type checkers and IDEs
    from emergeinit.auto import Candidate, InitChoice, auto_init_, choose_init
    from emergeinit.baselines import InitRecord, check_options, initialize
    from emergeinit.emergence import LayerGraph, exact_pivot, graph_emergence, layered_emergence, lemma_pivot
    from emergeinit.init import apply_plan_, emergence_init_, encoder_decoder_init_, tfixup_init_
    from emergeinit.layers import WeightLayer, find_blocks, find_weight_layers, register_weight_layer
    from emergeinit.plan import InitPlan, PlannedLayer, UnrepresentableError, plan_emergence
    from emergeinit.probe import EmergenceReport, LayerActivity, layer_graph, measure_emergence
    from emergeinit.trace import NonFiniteError
    from emergeinit.schedules import alpha_for_lr
    from emergeinit.tuning import auto_alpha, layerwise_lr_groups
