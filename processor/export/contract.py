"""The nightly export contract (SPEC section 4), declared as data.

This module is the one source of truth for what the export's five tables look
like: their columns, the kind of value each column holds, whether it may be
empty, which table it points to and which values an enumeration allows.
``processor.export.read`` reads and checks files against it (and raises
:class:`InvalidExport`); the generator and the facts builder use the same
constants instead of repeating literals.

``TABLES`` maps each table name to its :class:`Table`, in an order in which
every reference points to a table that comes earlier (users first), so checking
the tables in that order resolves every reference. Iterating ``TABLES`` yields
the names in that order.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class InvalidExport(Exception):
    """The export cannot be used at all (exit 4); ``str(e)`` names the file and the fix."""


class Kind(str, enum.Enum):
    """What a column holds, which decides how it is parsed and its dtype."""

    ID = "id"  # a row's own id or a reference to another table's id (text)
    TEXT = "text"
    ENUM = "enum"  # text restricted to Column.values
    BOOL = "bool"  # true/false
    INT = "int"  # whole number
    MONEY = "decimal_money"  # decimal string, at most 2 decimals -> int cents
    DATE = "date"  # YYYY-MM-DD, a UTC day
    TIMESTAMP = "timestamp"  # ISO-8601, UTC
    FLOAT = "float"  # a number (the rating, 0-5)
    AREAS = "areas"  # ';'-separated list of areas, kept as the raw text


@dataclass(frozen=True)
class Column:
    """One column of an export table.

    ``required`` columns must hold a value in every row; a nullable column
    with a ``default`` gets that value when empty (its dtype has no null).
    ``references`` names the table whose id this column holds, and ``role``
    (for references to users) the role that user must have.
    ``minimum``/``maximum`` bound numbers (money in currency units).
    ``pattern`` is a regular expression the whole text must match, and
    ``pattern_hint`` finishes the sentence telling a person how to fix it.
    """

    name: str
    kind: Kind
    required: bool = True
    values: tuple[str, ...] = ()
    references: str | None = None
    role: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    pattern: str | None = None
    pattern_hint: str | None = None
    default: object = None

    @property
    def output_name(self) -> str:
        """The column's name in the frames ``read_export`` returns.

        Money is returned as integer cents, so ``amount`` becomes
        ``amount_cents``; every other column keeps its name.
        """
        return f"{self.name}_cents" if self.kind is Kind.MONEY else self.name


@dataclass(frozen=True)
class Table:
    """One export table: its name, its id column and its columns in order."""

    name: str
    id_column: str
    columns: tuple[Column, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        """The header of the table's file, in order."""
        return tuple(column.name for column in self.columns)

    @property
    def output_names(self) -> tuple[str, ...]:
        """The columns of the frame ``read_export`` returns (without ``_row``)."""
        return tuple(column.output_name for column in self.columns)

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"{self.name} has no column {name!r}")

    @property
    def references(self) -> tuple[Column, ...]:
        return tuple(column for column in self.columns if column.references)


# Enumerations, shared by everything that needs to name these values.
ROLES = ("client", "talent", "project_success")
USER_STATUSES = ("active", "rejected")
PROJECT_STATUSES = ("active", "on_hold", "closed")
HOLD_REASONS = ("client_contact_loss", "talent_contact_loss", "non_payment", "other")
TALENT_DECISIONS = ("wait", "close", "continue", "halt")
MILESTONE_STATUSES = ("pending", "active", "completed", "validated", "released")
INVOICE_STATUSES = ("open", "paid", "void")
ATTEMPT_MAKERS = ("project_success", "platform")
ATTEMPT_CHANNELS = ("email", "phone", "chat")

AREAS_SEPARATOR = ";"
# Of a table's rows: more rejected than this and the night is not whole (--max-reject-share).
DEFAULT_MAX_REJECT_SHARE = 0.05
MAX_ID_LENGTH = 256  # characters; a longer id is a rejected row, never carried into the night
DEFAULT_MAX_ACTIVE_PROJECTS = 3  # SPEC 3: when max_active_projects is empty
RATING_RANGE = (0.0, 5.0)

_CURRENCY = dict(
    pattern=r"[A-Z]{3}",
    pattern_hint="is not an ISO 4217 currency code: write three capital letters like EUR",
)
# What processor.delivery can send: a dot-atom local part and a domain of labels (either may hold
# non-ASCII letters: SMTPUTF8, IDNA), literal characters so that RE2 (the reader) and Python agree.
_ADDRESS_CHAR = "A-Za-z0-9" + "\u00a1-\u2027\u202a-\U0010ffff"
_LABEL = f"[{_ADDRESS_CHAR}](?:[{_ADDRESS_CHAR}\\-]*[{_ADDRESS_CHAR}])?"
_ATOM = f"[{_ADDRESS_CHAR}!#$%&'*+/=?^_`{{|}}~\\-]+"
_EMAIL = dict(
    pattern=f"{_ATOM}(?:\\.{_ATOM})*@{_LABEL}(?:\\.{_LABEL})*",
    pattern_hint="is not an email address mail can be sent to: write it like name@example.com (no spaces, quotes, "
                 "brackets or commas; dots only between characters)",
)

USERS = Table(
    name="users",
    id_column="user_id",
    columns=(
        Column("user_id", Kind.ID),
        Column("role", Kind.ENUM, values=ROLES),
        Column("name", Kind.TEXT),
        Column("email", Kind.TEXT, **_EMAIL),
        Column("status", Kind.ENUM, values=USER_STATUSES),
        Column("is_top_shaker", Kind.BOOL, required=False, default=False),
        Column("areas", Kind.AREAS, required=False),
        Column("rating", Kind.FLOAT, required=False, minimum=RATING_RANGE[0], maximum=RATING_RANGE[1]),
        Column("max_active_projects", Kind.INT, required=False, minimum=0),
    ),
)

PROJECTS = Table(
    name="projects",
    id_column="project_id",
    columns=(
        Column("project_id", Kind.ID),
        Column("title", Kind.TEXT),
        Column("client_id", Kind.ID, references="users", role="client"),
        Column("talent_id", Kind.ID, references="users", role="talent"),
        Column("project_success_id", Kind.ID, references="users", role="project_success"),
        Column("area", Kind.TEXT),
        Column("status", Kind.ENUM, values=PROJECT_STATUSES),
        Column("hold_reason", Kind.ENUM, required=False, values=HOLD_REASONS),
        Column("held_since", Kind.DATE, required=False),
        Column("talent_decision", Kind.ENUM, required=False, values=TALENT_DECISIONS),
        Column("created_at", Kind.TIMESTAMP),
    ),
)

MILESTONES = Table(
    name="milestones",
    id_column="milestone_id",
    columns=(
        Column("milestone_id", Kind.ID),
        Column("project_id", Kind.ID, references="projects"),
        Column("sequence", Kind.INT, minimum=1),
        Column("title", Kind.TEXT),
        Column("amount", Kind.MONEY, minimum=0),
        Column("currency", Kind.TEXT, **_CURRENCY),
        Column("status", Kind.ENUM, values=MILESTONE_STATUSES),
        Column("payee_id", Kind.ID, references="users"),
        Column("escrow_amount", Kind.MONEY, required=False, minimum=0, default=0),
        Column("activated_at", Kind.TIMESTAMP, required=False),
        Column("completed_at", Kind.TIMESTAMP, required=False),
        Column("validated_at", Kind.TIMESTAMP, required=False),
        Column("released_at", Kind.TIMESTAMP, required=False),
    ),
)

INVOICES = Table(
    name="invoices",
    id_column="invoice_id",
    columns=(
        Column("invoice_id", Kind.ID),
        Column("milestone_id", Kind.ID, references="milestones"),
        Column("amount", Kind.MONEY, minimum=0),
        Column("currency", Kind.TEXT, **_CURRENCY),
        Column("issued_at", Kind.DATE),
        Column("due_date", Kind.DATE),
        Column("status", Kind.ENUM, values=INVOICE_STATUSES),
        Column("paid_at", Kind.TIMESTAMP, required=False),
    ),
)

CONTACT_ATTEMPTS = Table(
    name="contact_attempts",
    id_column="attempt_id",
    columns=(
        Column("attempt_id", Kind.ID),
        Column("project_id", Kind.ID, references="projects"),
        Column("target_user_id", Kind.ID, references="users"),
        Column("made_by", Kind.ENUM, values=ATTEMPT_MAKERS),
        Column("channel", Kind.ENUM, values=ATTEMPT_CHANNELS),
        Column("attempted_at", Kind.TIMESTAMP),
        Column("answered_at", Kind.TIMESTAMP, required=False),
    ),
)

TABLES: dict[str, Table] = {
    table.name: table for table in (USERS, PROJECTS, MILESTONES, INVOICES, CONTACT_ATTEMPTS)
}

# The natural Parquet types (SPEC 4) whose values can be a column's values, by kind; text can hold
# every kind. A column of another of these types would have every value rejected, so its table is
# refused instead. Ids and free text take any of them as their text; an enumeration, an email or a
# currency code is never the text of a number, a date or a boolean, so those columns take only text.
NATURAL_PARQUET_TYPES: dict[Kind, tuple[str, ...]] = {
    Kind.ID: ("integer", "decimal", "floating", "boolean", "date", "timestamp"),
    Kind.TEXT: ("integer", "decimal", "floating", "boolean", "date", "timestamp"),
    Kind.AREAS: ("integer", "decimal", "floating", "boolean", "date", "timestamp"),
    Kind.ENUM: (),
    Kind.BOOL: ("boolean",),
    Kind.INT: ("integer", "floating", "whole decimal"),
    Kind.MONEY: ("integer", "floating", "decimal"),
    Kind.DATE: ("date", "timestamp"),
    Kind.TIMESTAMP: ("date", "timestamp"),
    Kind.FLOAT: ("integer", "floating", "decimal"),
}


def natural_parquet_types(column: Column) -> tuple[str, ...]:
    """The natural Parquet types (besides text) whose values can be ``column``'s values."""
    return () if column.pattern else NATURAL_PARQUET_TYPES[column.kind]


# Columns whose values must be unique within a group, beyond the id columns:
# a milestone's sequence is unique within its project.
UNIQUE_WITHIN = {"milestones": (("project_id", "sequence"),)}


def _check_contract() -> None:
    """Fail at import if the declaration contradicts itself."""
    seen: set[str] = set()
    for name, table in TABLES.items():
        assert table.id_column in table.column_names, name
        for column in table.columns:
            if column.kind is Kind.ENUM:
                assert column.values, (name, column.name)
            if column.references:
                assert column.references in seen, (name, column.name)
            if column.role:
                assert column.references == "users" and column.role in ROLES
            if column.kind in (Kind.MONEY, Kind.BOOL) and not column.required:
                assert column.default is not None, (name, column.name)
        seen.add(name)
    assert set(NATURAL_PARQUET_TYPES) == set(Kind)


_check_contract()
