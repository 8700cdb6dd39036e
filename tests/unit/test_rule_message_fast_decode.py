"""The worker's msgspec fast path decodes rule messages into mirrors of the contract models.

The mirrors must stay field-for-field equal to the pydantic models of the public contract: a
field added to a model and not to its mirror would be silently dropped by the fast path.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from pydantic import BaseModel

from ttp_core.contract.payloads import RuleReloaded, RuleStateChanged
from ttp_worker import rulebook


def _mirror_fields(struct: type[msgspec.Struct]) -> dict[str, bool]:
    return {f.name: f.required for f in msgspec.structs.fields(struct)}


def _model_fields(model: type[BaseModel]) -> dict[str, bool]:
    return {name: info.is_required() for name, info in model.model_fields.items()}


@pytest.mark.parametrize(
    ("mirror", "model"),
    [(rulebook._ReloadedData, RuleReloaded), (rulebook._StateData, RuleStateChanged)],
)
def test_fast_decode_mirrors_have_the_contract_models_fields(mirror: Any, model: Any) -> None:
    assert _mirror_fields(mirror) == _model_fields(model)


@pytest.mark.parametrize(
    ("mirror", "model"),
    [(rulebook._ReloadedData, RuleReloaded), (rulebook._StateData, RuleStateChanged)],
)
def test_fast_decode_mirrors_have_the_contract_models_defaults(mirror: Any, model: Any) -> None:
    defaults = {f.name: f.default for f in msgspec.structs.fields(mirror) if not f.required}
    assert defaults == {
        name: info.default for name, info in model.model_fields.items() if not info.is_required()
    }
