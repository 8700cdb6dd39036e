"""The rule schema (see docs/rules.md): what a rule file may say, as typed models.

The model checks structure and value ranges; cross-references (ATT&CK ids, regex
syntax, file names, inline tests) are checked by `ttp_core.rules.validator`.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

TOKEN_PATTERN: Final = r"^[A-Za-z0-9_-]{1,64}$"  # noqa: S105 - not a secret
FIELD_PATH_PATTERN: Final = r"^[^\s.][^\s]*$"
LIFTER_PREFIX: Final = "lifter:"
ZERO_CONFIDENCE: Final = "confidence_zero"
"""The error type of a 0 confidence on a rule that is not a lifter rule."""

DEFAULT_FIELDS: Final[dict[str, str]] = {
    "command": "command_text",
    "http_request": "raw_url",
    "auth_attempt": "username",
    "payload": "payload_text",
    "email": "subject",
}

STRING_OPERATORS: Final = ("pattern", "contains", "startswith", "endswith")
OPERATORS: Final = (*STRING_OPERATORS, "equals", "in", "exists", "gt", "gte", "lt", "lte")

Token = Annotated[StrictStr, Field(pattern=TOKEN_PATTERN)]
FieldPath = Annotated[StrictStr, Field(pattern=FIELD_PATH_PATTERN, max_length=256)]
# Operand sizes are capped: RE2's cost grows with pattern length times input length, and
# no rule may make one event expensive enough to stall a worker.
MAX_OPERAND: Final = 1024
MAX_NAME: Final = 200
MAX_DESCRIPTION: Final = 4000
Operand = Annotated[StrictStr, Field(min_length=1, max_length=MAX_OPERAND)]
Scalar = Annotated[StrictStr, Field(max_length=MAX_OPERAND)] | StrictInt | StrictFloat | StrictBool
Number = StrictInt | StrictFloat


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Leaf(_Strict):
    """A test of one payload field with exactly one operator."""

    field: FieldPath | None = None
    pattern: Operand | None = None
    contains: Operand | None = None
    startswith: Operand | None = None
    endswith: Operand | None = None
    equals: Scalar | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in", min_length=1, max_length=1000)
    exists: StrictBool | None = None
    gt: Number | None = None
    gte: Number | None = None
    lt: Number | None = None
    lte: Number | None = None
    ignore_case: StrictBool = False

    @model_validator(mode="after")
    def _one_operator(self) -> Leaf:
        present = [name for name in OPERATORS if self.operand_of(name) is not None]
        if not present:
            raise ValueError(
                "a match leaf needs one operator: "
                + ", ".join(OPERATORS)
                + " (or a combinator: all, any, not)"
            )
        if len(present) > 1:
            raise ValueError(
                f"a match leaf takes exactly one operator, found {', '.join(present)}; "
                "combine leaves with all/any"
            )
        if self.ignore_case and present[0] not in (*STRING_OPERATORS, "equals", "in"):
            raise ValueError(f"ignore_case does not apply to {present[0]!r}")
        return self

    def operand_of(self, name: str) -> Any:
        return getattr(self, "in_" if name == "in" else name)

    @property
    def operator(self) -> str:
        return next(name for name in OPERATORS if self.operand_of(name) is not None)

    @property
    def operand(self) -> Any:
        return self.operand_of(self.operator)


class AllOf(_Strict):
    """Fires when every child fires."""

    all: list[MatchNode] = Field(min_length=1, max_length=256)


class AnyOf(_Strict):
    """Fires when at least one child fires."""

    any: list[MatchNode] = Field(min_length=1, max_length=256)


class NotOf(_Strict):
    """Fires when its child does not."""

    not_: MatchNode = Field(alias="not")


def _node_kind(value: Any) -> str:
    if isinstance(value, dict):
        for key in ("all", "any", "not"):
            if key in value:
                return key
        return "leaf"
    if isinstance(value, BaseModel):
        return {AllOf: "all", AnyOf: "any", NotOf: "not"}.get(type(value), "leaf")
    return "leaf"


MatchNode = Annotated[
    Annotated[AllOf, Tag("all")]
    | Annotated[AnyOf, Tag("any")]
    | Annotated[NotOf, Tag("not")]
    | Annotated[Leaf, Tag("leaf")],
    Discriminator(_node_kind),
]


class ExternalMatch(BaseModel):
    """`match.kind: lifter:<name>`: evaluated outside the built-in engine."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: Annotated[StrictStr, Field(pattern=r"^lifter:[A-Za-z0-9_.-]{1,64}$")]

    @property
    def lifter(self) -> str:
        return self.kind.removeprefix(LIFTER_PREFIX)


def _match_kind(value: Any) -> str:
    if isinstance(value, dict) and "kind" in value:
        return "external"
    if isinstance(value, ExternalMatch):
        return "external"
    return _node_kind(value)


RuleMatch = Annotated[
    Annotated[ExternalMatch, Tag("external")]
    | Annotated[AllOf, Tag("all")]
    | Annotated[AnyOf, Tag("any")]
    | Annotated[NotOf, Tag("not")]
    | Annotated[Leaf, Tag("leaf")],
    Discriminator(_match_kind),
]


class Emit(_Strict):
    """One ATT&CK technique a firing rule reports."""

    tactic: Annotated[StrictStr, Field(pattern=r"^TA\d{4}$")]
    technique_id: Annotated[StrictStr, Field(pattern=r"^T\d{4}$")]
    sub_technique_id: Annotated[StrictStr, Field(pattern=r"^T\d{4}\.\d{3}$")] | None = None
    # Stored as float so `1` and `1.0` hash alike. 0 is allowed here for lifter rules only
    # (their "never emits a fresh tag" sentinel); `Rule` refuses it on any other rule.
    confidence: Annotated[StrictFloat | StrictInt, Field(ge=0, le=1), AfterValidator(float)]

    @field_validator("sub_technique_id")
    @classmethod
    def _child_of_technique(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A field validator (not a model one) so the error is located at sub_technique_id.
        technique_id = info.data.get("technique_id")
        if value and technique_id and not value.startswith(technique_id + "."):
            raise ValueError(f"sub_technique_id {value} is not a sub-technique of {technique_id}")
        return value


class InlineTest(_Strict):
    """An example event and whether the rule must fire on it."""

    event: dict[str, Any]
    expect: Literal["fire", "no_fire"]
    source_kind: Token | None = None


class Rule(BaseModel):
    """A validated rule definition (see docs/rules.md)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    rule_id: Token
    rule_version: Annotated[StrictInt, Field(ge=1)]
    name: Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME)]
    description: Annotated[StrictStr, Field(max_length=MAX_DESCRIPTION)] | None = None
    applies_to: Annotated[list[Token], Field(min_length=1, max_length=64)]
    match: RuleMatch
    emits: Annotated[list[Emit], Field(min_length=1, max_length=64)]
    evidence_fields: Annotated[list[FieldPath], Field(max_length=64)] = []
    tests: Annotated[list[InlineTest], Field(max_length=1000)] = []

    @field_validator("emits")
    @classmethod
    def _zero_confidence_only_for_lifters(
        cls, emits: list[Emit], info: ValidationInfo
    ) -> list[Emit]:
        if isinstance(info.data.get("match"), ExternalMatch):
            return emits
        for index, emit in enumerate(emits):
            if emit.confidence == 0:
                raise PydanticCustomError(
                    ZERO_CONFIDENCE,
                    "confidence must be > 0 (0 is the sentinel of lifter rules only)",
                    {"index": index},
                )
        return emits

    @property
    def is_external(self) -> bool:
        return isinstance(self.match, ExternalMatch)

    def normalised(self) -> dict[str, Any]:
        """The rule as plain JSON data: the form hashed, stored and published."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


RULE_KEYS: Final = frozenset(Rule.model_fields)
