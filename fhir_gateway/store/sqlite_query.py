"""The SQLite schema, and the query model as SQL: indexed comparisons on `resources`, EXISTS
on side tables.

A positive token with an exact system and code (the common `patient=…&code=…&date=…` search)
drives the query from the `tokens` primary key (field, system, code, patient, date_start, id),
so a date-sorted page is one index range read in order, with no sort step. Pure: builds text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fhir_gateway.store.base import (
    ComponentClause,
    Cursor,
    DateClause,
    IdClause,
    NumberBounds,
    QuantityClause,
    QuantityMatch,
    Query,
    RangeBounds,
    ReferenceClause,
    TokenClause,
    TokenMatch,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    rid INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    json BLOB NOT NULL,
    patient TEXT,
    device TEXT,
    date_start INTEGER NOT NULL,
    date_end INTEGER NOT NULL,
    code_group TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS resources_by_id ON resources (type, id);
CREATE INDEX IF NOT EXISTS resources_by_patient_date ON resources (type, patient, date_start, id);
CREATE INDEX IF NOT EXISTS resources_lastn
    ON resources (type, patient, code_group, date_start, id);
CREATE INDEX IF NOT EXISTS resources_by_patient_updated
    ON resources (type, patient, last_updated, id);
CREATE INDEX IF NOT EXISTS resources_by_patient_id ON resources (type, patient, id);
CREATE INDEX IF NOT EXISTS resources_by_date ON resources (type, date_start, id);
CREATE INDEX IF NOT EXISTS resources_by_last_updated ON resources (type, last_updated, id);
CREATE INDEX IF NOT EXISTS resources_by_device ON resources (type, device);

CREATE TABLE IF NOT EXISTS history (
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    json BLOB NOT NULL,
    date_start INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS history_by_version ON history (type, id, version);

-- patient and date_start are copied here so patient+code+date is one primary-key range.
CREATE TABLE IF NOT EXISTS tokens (
    field TEXT NOT NULL,
    system TEXT NOT NULL,
    code TEXT NOT NULL,
    patient TEXT NOT NULL,
    date_start INTEGER NOT NULL,
    id TEXT NOT NULL,
    rid INTEGER NOT NULL,
    PRIMARY KEY (field, system, code, patient, date_start, id, rid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tokens_by_resource ON tokens (rid, field, system, code);

CREATE TABLE IF NOT EXISTS quantities (
    rid INTEGER NOT NULL,
    value REAL NOT NULL,
    system TEXT NOT NULL,
    code TEXT NOT NULL,
    unit TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS quantities_by_resource ON quantities (rid);

CREATE TABLE IF NOT EXISTS components (
    rid INTEGER NOT NULL,
    system TEXT NOT NULL,
    code TEXT NOT NULL,
    value REAL NOT NULL,
    q_system TEXT NOT NULL,
    q_code TEXT NOT NULL,
    q_unit TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS components_by_resource ON components (rid);

-- The widest [date_start, date_end) ever stored; only grows (see sqlite_query._MAX_SPAN).
CREATE TABLE IF NOT EXISTS span_bound (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 0),
    max_span INTEGER NOT NULL
);
INSERT OR IGNORE INTO span_bound VALUES (0, 0);

CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
"""

COLUMNS = "r.type, r.id, r.version, r.last_updated, r.deleted, r.json, r.date_start"

# Every stored date range is at most this wide, so `date_end > v` implies
# `date_start > v - max_span`: a bound the index can use (see versioning.date_span).
_MAX_SPAN = "(SELECT max_span FROM span_bound)"


@dataclass(frozen=True, slots=True)
class Statement:
    sql: str
    params: tuple[object, ...]


@dataclass(slots=True)
class _Where:
    source: str = "resources AS r"
    date_start: str = "r.date_start"
    id_column: str = "r.id"
    conditions: list[str] = field(default_factory=list)
    params: list[object] = field(default_factory=list)

    def add(self, condition: str, *params: object) -> None:
        self.conditions.append(condition)
        self.params.extend(params)

    def text(self) -> str:
        return " AND ".join(self.conditions) if self.conditions else "1"


def _driving_token(query: Query) -> tuple[TokenClause, TokenMatch] | None:
    for wanted in ("code", "category", "identifier"):
        for clause in query.clauses:
            if (
                isinstance(clause, TokenClause)
                and clause.field == wanted
                and not clause.negate
                and len(clause.tokens) == 1
                and clause.tokens[0].system is not None
                and clause.tokens[0].code is not None
            ):
                return clause, clause.tokens[0]
    return None


def single_patient(query: Query) -> str | None:
    for clause in query.clauses:
        if isinstance(clause, ReferenceClause) and clause.field == "patient":
            if len(clause.ids) == 1:
                return clause.ids[0]
    return None


def _where(query: Query, *, drive_by_tokens: bool, source: str | None = None) -> _Where:
    where = _Where()
    driver = _driving_token(query) if drive_by_tokens else None
    if driver is not None:
        token_clause, token = driver
        # CROSS JOIN makes `tokens` the outer loop: SQLite never reorders it (query planner §5).
        where.source = "tokens AS t CROSS JOIN resources AS r ON r.rid = t.rid"
        where.date_start, where.id_column = "t.date_start", "t.id"
        where.add("t.field = ? AND t.system = ? AND t.code = ?", token_clause.field, token.system)
        where.params.append(token.code)
        patient = single_patient(query)
        if patient is not None:
            where.add("t.patient = ?", patient)
    elif source is not None:
        where.source = source
    where.add("r.type = ? AND r.deleted = 0", query.resource_type)
    for clause in query.clauses:
        if driver is not None and clause is driver[0]:
            continue
        _add_clause(where, clause)
    return where


def _add_clause(where: _Where, clause: object) -> None:
    if isinstance(clause, IdClause):
        where.add(_in("r.id", len(clause.ids)), *clause.ids)
    elif isinstance(clause, ReferenceClause):
        where.add(_in(f"r.{clause.field}", len(clause.ids)), *clause.ids)
    elif isinstance(clause, TokenClause):
        alternatives, params = _any_of([_token("x.system", "x.code", t) for t in clause.tokens])
        exists = (
            "EXISTS (SELECT 1 FROM tokens AS x WHERE x.rid = r.rid AND x.field = ?"
            f" AND ({alternatives}))"
        )
        where.add(f"NOT {exists}" if clause.negate else exists, clause.field, *params)
    elif isinstance(clause, DateClause):
        if clause.field == "date":
            parts = [_date_range(where.date_start, "r.date_end", b) for b in clause.alternatives]
        else:
            parts = [_last_updated(bounds) for bounds in clause.alternatives]
        condition, params = _any_of(parts)
        where.add(f"({condition})", *params)
        if clause.field == "date" and len(clause.alternatives) > 1:
            for bound, bound_params in _date_index_bounds(where.date_start, clause.alternatives):
                where.add(bound, *bound_params)
    elif isinstance(clause, QuantityClause):
        condition, params = _any_of(
            [_quantity("q.value", "q.system", "q.code", "q.unit", m) for m in clause.alternatives]
        )
        where.add(
            f"EXISTS (SELECT 1 FROM quantities AS q WHERE q.rid = r.rid AND ({condition}))",
            *params,
        )
    elif isinstance(clause, ComponentClause):
        parts = []
        for match in clause.alternatives:
            token_sql, token_params = _token("c.system", "c.code", match.token)
            quantity_sql, quantity_params = _quantity(
                "c.value", "c.q_system", "c.q_code", "c.q_unit", match.quantity
            )
            parts.append((f"{token_sql} AND {quantity_sql}", token_params + quantity_params))
        condition, params = _any_of(parts)
        where.add(
            f"EXISTS (SELECT 1 FROM components AS c WHERE c.rid = r.rid AND ({condition}))",
            *params,
        )
    else:  # pragma: no cover - the Clause union is closed
        raise TypeError(f"unknown clause {clause!r}")


Fragment = tuple[str, list[object]]


def _in(column: str, count: int) -> str:
    return f"{column} IN ({', '.join('?' * count)})" if count else "0"


def _any_of(parts: list[Fragment]) -> Fragment:
    if not parts:
        return "0", []
    return " OR ".join(f"({sql})" for sql, _ in parts), [p for _, ps in parts for p in ps]


def _token(system_column: str, code_column: str, token: TokenMatch) -> Fragment:
    conditions, params = ["1"], list[object]()
    if token.system is not None:
        conditions.append(f"{system_column} = ?")
        params.append(token.system)
    if token.code is not None:
        conditions.append(f"{code_column} = ?")
        params.append(token.code)
    return " AND ".join(conditions), params


def _number(column: str, bounds: NumberBounds) -> Fragment:
    conditions, params = ["1"], list[object]()
    for operator, value in (
        (">=", bounds.ge),
        (">", bounds.gt),
        ("<=", bounds.le),
        ("<", bounds.lt),
    ):
        if value is not None:
            conditions.append(f"{column} {operator} ?")
            params.append(value)
    return " AND ".join(conditions), params


def _quantity(value: str, system: str, code: str, unit: str, match: QuantityMatch) -> Fragment:
    sql, params = _number(value, match.bounds)
    if match.system is not None:
        sql += f" AND {system} = ?"
        params.append(match.system)
    if match.code is not None:
        sql += f" AND ({code} = ? OR {unit} = ?)"
        params.extend((match.code, match.code))
    return sql, params


def _date_range(start: str, end: str, bounds: RangeBounds) -> Fragment:
    conditions, params = ["1"], list[object]()
    if bounds.start_ge is not None:
        conditions.append(f"{start} >= ?")
        params.append(bounds.start_ge)
    if bounds.start_lt is not None:
        conditions.append(f"{start} < ?")
        params.append(bounds.start_lt)
    if bounds.end_gt is not None:
        conditions.append(f"{end} > ? AND {start} > ? - {_MAX_SPAN}")
        params.extend((bounds.end_gt, bounds.end_gt))
    if bounds.end_le is not None:
        conditions.append(f"{end} <= ?")
        params.append(bounds.end_le)
    return " AND ".join(conditions), params


def _date_index_bounds(start: str, alternatives: tuple[RangeBounds, ...]) -> list[Fragment]:
    """Bounds on `start` that every alternative implies, so an OR (`ge`, `le`, `ne`) still
    reads one index range instead of everything before (or after) the date.

    `ge` is "end > e OR (start >= s AND end <= e)": each side bounds start from below
    (end > e implies start > e - max_span), so start >= min(e - max_span, s) holds for both.
    """
    lowers: list[Fragment] = []
    uppers: list[Fragment] = []
    for bounds in alternatives:
        if bounds.start_ge is not None:
            lowers.append(("?", [bounds.start_ge]))
        elif bounds.end_gt is not None:
            lowers.append((f"? - {_MAX_SPAN}", [bounds.end_gt]))
        if bounds.start_lt is not None:
            uppers.append(("?", [bounds.start_lt]))
    found: list[Fragment] = []
    # min()/max() with two or more arguments are SQLite's scalar functions (one = aggregate).
    for operator, function, parts in ((">=", "min", lowers), ("<", "max", uppers)):
        if len(parts) == len(alternatives):
            found.append(
                (
                    f"{start} {operator} {function}({', '.join(sql for sql, _ in parts)})",
                    [param for _, params in parts for param in params],
                )
            )
    return found


def _last_updated(bounds: RangeBounds) -> Fragment:
    """The target range of _lastUpdated is [last_updated, last_updated + 1µs)."""
    conditions, params = ["1"], list[object]()
    for lower in (bounds.start_ge, bounds.end_gt):
        if lower is not None:
            conditions.append("r.last_updated >= ?")
            params.append(lower)
    for upper in (bounds.start_lt, bounds.end_le):
        if upper is not None:
            conditions.append("r.last_updated < ?")
            params.append(upper)
    return " AND ".join(conditions), params


def _sort_columns(query: Query, where: _Where) -> tuple[str, ...]:
    if query.sort.field == "date":
        return where.date_start, where.id_column
    if query.sort.field == "_lastUpdated":
        return "r.last_updated", where.id_column
    return (where.id_column,)


def _after(columns: tuple[str, ...], cursor: Cursor, descending: bool) -> Fragment:
    operator = "<" if descending else ">"
    if len(columns) == 1:
        return f"{columns[0]} {operator} ?", [cursor.id]
    return f"({columns[0]}, {columns[1]}) {operator} (?, ?)", [cursor.value, cursor.id]


def search(query: Query) -> tuple[Statement, bool]:
    """SELECT for one page (limit + 1 rows); True when rows come back reversed (a `before` page)."""
    where = _where(query, drive_by_tokens=True)
    backwards = query.before is not None
    descending = query.sort.descending != backwards
    columns = _sort_columns(query, where)
    cursor = query.before if query.before is not None else query.after
    if cursor is not None:
        keyset, keyset_params = _after(columns, cursor, descending)
        where.add(keyset, *keyset_params)
    direction = " DESC" if descending else ""
    order = ", ".join(column + direction for column in columns)
    sql = f"SELECT {COLUMNS} FROM {where.source} WHERE {where.text()} ORDER BY {order} LIMIT ?"
    return Statement(sql, (*where.params, query.limit + 1)), backwards


def count(query: Query) -> Statement:
    where = _where(query, drive_by_tokens=True)
    return Statement(
        f"SELECT count(*) FROM {where.source} WHERE {where.text()}", tuple(where.params)
    )


def lastn_groups(query: Query) -> Statement:
    """The code groups to visit; for one patient a skip scan of the lastn index, a seek each."""
    patient = single_patient(query)
    if patient is None:
        where = _where(query, drive_by_tokens=False)
        where.add("r.code_group IS NOT NULL")
        sql = f"SELECT DISTINCT r.code_group FROM {where.source} WHERE {where.text()} ORDER BY 1"
        return Statement(sql, tuple(where.params))
    sql = """
        WITH RECURSIVE grp(code_group) AS (
            SELECT min(code_group) FROM resources
            WHERE type = ?1 AND patient = ?2 AND code_group IS NOT NULL
            UNION ALL
            SELECT (SELECT min(code_group) FROM resources
                    WHERE type = ?1 AND patient = ?2 AND code_group > grp.code_group)
            FROM grp WHERE grp.code_group IS NOT NULL
        )
        SELECT code_group FROM grp WHERE code_group IS NOT NULL
    """
    return Statement(sql, (query.resource_type, patient))


def lastn_group(query: Query, code_group: str, max_per_group: int) -> Statement:
    """The newest rows of one group: one LIMITed range of (type, patient, code_group, date)."""
    source = (
        "resources AS r INDEXED BY resources_lastn"
        if single_patient(query) is not None
        else "resources AS r"
    )
    where = _where(query, drive_by_tokens=False, source=source)
    where.add("r.code_group = ?", code_group)
    sql = (
        f"SELECT {COLUMNS} FROM {where.source} WHERE {where.text()}"
        " ORDER BY r.date_start DESC, r.id DESC LIMIT ?"
    )
    return Statement(sql, (*where.params, max_per_group))
