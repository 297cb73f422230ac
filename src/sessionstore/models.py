"""The distillation records, JSON-compatible with OpenJarvis's distillation models.

A ``session.json`` or ``plan.json`` written by OpenJarvis loads here unchanged and
dumps back to the same keys: the field names, types, defaults, value constraints
and enum values below are the ones in ``shared/MODELS.md``. Nothing here knows
about SQLite or the wire; those layers convert at their own edges.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class EditPillar(str, Enum):
    INTELLIGENCE = "intelligence"
    AGENT = "agent"
    TOOLS = "tools"
    ENGINE = "engine"


class EditRiskTier(str, Enum):
    AUTO = "auto"
    REVIEW = "review"
    MANUAL = "manual"


class EditOp(str, Enum):
    SET_MODEL_FOR_QUERY_CLASS = "set_model_for_query_class"
    SET_MODEL_PARAM = "set_model_param"
    PATCH_SYSTEM_PROMPT = "patch_system_prompt"
    REPLACE_SYSTEM_PROMPT = "replace_system_prompt"
    SET_AGENT_CLASS = "set_agent_class"
    SET_AGENT_PARAM = "set_agent_param"
    EDIT_FEW_SHOT_EXEMPLARS = "edit_few_shot_exemplars"
    ADD_TOOL_TO_AGENT = "add_tool_to_agent"
    REMOVE_TOOL_FROM_AGENT = "remove_tool_from_agent"
    EDIT_TOOL_DESCRIPTION = "edit_tool_description"
    LORA_FINETUNE = "lora_finetune"


class TriggerKind(str, Enum):
    SCHEDULED = "scheduled"
    CLUSTER = "cluster"
    USER_FLAG = "user_flag"
    ON_DEMAND = "on_demand"


class AutonomyMode(str, Enum):
    AUTO = "auto"
    TIERED = "tiered"
    MANUAL = "manual"


class SessionStatus(str, Enum):
    INITIATED = "initiated"
    DIAGNOSING = "diagnosing"
    PLANNING = "planning"
    EXECUTING = "executing"
    AWAITING_REVIEW = "awaiting_review"
    COMPLETED = "completed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


OutcomeStatus = Literal[
    "applied",
    "rejected_by_gate",
    "pending_review",
    "rejected_by_user",
    "rolled_back",
    "skipped",
]


# inf and NaN serialise as JSON's Infinity/NaN, not as null. Saves refuse them (a
# session.json written by OpenJarvis would hold null), but an index row the original
# library wrote may hold them, and a read through the daemon must give back what the
# store gives: pydantic's default would turn them into null (or a failed validation)
# on the wire.
_KEEP_NON_FINITE = ConfigDict(ser_json_inf_nan="constants")


class BenchmarkSnapshot(BaseModel):
    """Benchmark scores measured before or after a session's edits."""

    model_config = _KEEP_NON_FINITE

    benchmark_version: str
    overall_score: float = Field(ge=0.0, le=1.0)
    cluster_scores: dict[str, float] = Field(default_factory=dict)
    task_count: int = Field(ge=0)
    elapsed_seconds: float = Field(ge=0.0)


class EditOutcome(BaseModel):
    """What happened to one proposed edit."""

    model_config = _KEEP_NON_FINITE

    edit_id: str
    status: OutcomeStatus
    benchmark_delta: float | None = None
    cluster_deltas: dict[str, float] = Field(default_factory=dict)
    error: str | None = None
    applied_at: datetime | None = None


class LearningSession(BaseModel):
    """One distillation run; ``session.json`` holds it in full."""

    model_config = _KEEP_NON_FINITE

    id: str
    parent_session_id: str | None = None
    trigger: TriggerKind
    trigger_metadata: dict[str, Any] = Field(default_factory=dict)
    status: SessionStatus
    autonomy_mode: AutonomyMode
    started_at: datetime
    ended_at: datetime | None = None
    diagnosis_path: Path
    plan_path: Path
    benchmark_before: BenchmarkSnapshot
    benchmark_after: BenchmarkSnapshot | None = None
    edit_outcomes: list[EditOutcome] = Field(default_factory=list)
    git_checkpoint_pre: str
    git_checkpoint_post: str | None = None
    teacher_cost_usd: float = Field(ge=0.0)
    error: str | None = None


class Edit(BaseModel):
    """One proposed change in a plan; gives an outcome its pillar/op/target/risk tier."""

    id: str
    pillar: EditPillar
    op: EditOp
    target: str
    payload: dict[str, Any] = Field(default_factory=dict)
    rationale: str
    expected_improvement: str
    risk_tier: EditRiskTier
    references: list[str] = Field(default_factory=list)


class FailureCluster(BaseModel):
    id: str
    description: str
    sample_trace_ids: list[str] = Field(default_factory=list)
    student_failure_rate: float = Field(ge=0.0, le=1.0)
    teacher_success_rate: float = Field(ge=0.0, le=1.0)
    skill_gap: str
    addressed_by_edit_ids: list[str] = Field(default_factory=list)


class LearningPlan(BaseModel):
    """The plan a session executes (``plan.json``)."""

    session_id: str
    diagnosis_summary: str
    failure_clusters: list[FailureCluster] = Field(default_factory=list)
    edits: list[Edit] = Field(default_factory=list)
    teacher_model: str
    estimated_cost_usd: float = Field(ge=0.0)
    created_at: datetime


__all__ = [
    "AutonomyMode",
    "BenchmarkSnapshot",
    "Edit",
    "EditOp",
    "EditOutcome",
    "EditPillar",
    "EditRiskTier",
    "FailureCluster",
    "LearningPlan",
    "LearningSession",
    "OutcomeStatus",
    "SessionStatus",
    "TriggerKind",
]
