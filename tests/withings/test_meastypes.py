"""The meastype table against the reference doc (a copy in tests/fixtures), and its CodeSystems."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fhir_gateway.fhir.validation import (
    BP_COMPONENTS,
    VITAL_SIGN_UNITS,
    VITAL_SIGNS,
    validate_resource,
)
from fhir_gateway.withings.identity import WITHINGS_AFIB_SYSTEM, WITHINGS_MEASTYPE_SYSTEM
from fhir_gateway.withings.meastypes import (
    AFIB_RESULTS,
    MEASTYPE_BY_TYPE,
    MEASTYPES,
    POSITIONS,
    VITALSIGNS_PROFILE,
)
from fhir_gateway.withings.terminology import (
    afib_code_system,
    code_systems,
    meastype_code_system,
)

DOC = (Path(__file__).parents[1] / "fixtures" / "withings" / "withings-api.md").read_text()


def _section(start: str, end: str) -> str:
    return DOC[DOC.index(start) : DOC.index(end, DOC.index(start))]


def _doc_meastypes() -> dict[int, tuple[str, str]]:
    """§3.6 official table: type → (name, unit text)."""
    rows = re.findall(
        r"^\| (\d+) \| (.+?) \| (.+?) \| .*\|$",
        _section("### 3.6", "### 3.7"),
        flags=re.MULTILINE,
    )
    return {int(type_): (name, unit) for type_, name, unit in rows}


def _base_name(name: str) -> str:
    return re.split(r" \(| —", name)[0].strip().casefold()


def _base_unit(text: str) -> str:
    """The doc's unit cell reduced to the unit itself: 'ms (VERIFY)' → 'ms'."""
    text = text.replace("`", "")
    if text.startswith("("):  # "(ms after scaling — VERIFY exponent)", "(µS? VERIFY)"
        text = text[1:]
    text = re.split(r"[ ?(]", text.strip())[0] if not text.startswith("classification") else "code"
    return {"unitless": "index"}.get(text, text)


DOC_MEASTYPES = _doc_meastypes()


def test_the_doc_table_was_parsed() -> None:
    assert len(DOC_MEASTYPES) == 35  # the rows of the official list
    assert DOC_MEASTYPES[11][0].startswith("Heart Pulse")


@pytest.mark.parametrize("meastype", sorted(DOC_MEASTYPES))
def test_every_documented_type_is_in_the_table_with_its_name_and_unit(meastype: int) -> None:
    name, unit = DOC_MEASTYPES[meastype]
    row = MEASTYPE_BY_TYPE[meastype]
    assert _base_name(row.name) == _base_name(name)
    assert row.withings_unit == _base_unit(unit)


def test_secondary_source_urine_types_are_marked_verify_without_loinc() -> None:
    paragraph = _section("Additional types in the newer spec", "Undocumented but present")
    listed = {int(t) for t in re.findall(r"\b(\d{3}) [A-Z]", paragraph)}
    assert listed == {147, 148, 151, 204, 205, 248, 249, 251}
    for type_, unit in re.findall(r"\b(\d{3}) [^,(]+\(([^)]+)\)", paragraph):
        assert MEASTYPE_BY_TYPE[int(type_)].withings_unit == unit
    for type_ in listed:
        row = MEASTYPE_BY_TYPE[type_]
        assert row.source == "verify"
        assert row.loinc is None


@pytest.mark.parametrize("meastype", [158, 159, 197, 198, 229])
def test_undocumented_but_real_types_are_known(meastype: int) -> None:
    assert MEASTYPE_BY_TYPE[meastype].loinc is None


def _expand(types_cell: str) -> list[int]:
    types: list[int] = []
    for part in re.split(r"[,/]", types_cell):
        bounds = part.strip().split("-")
        if len(bounds) == 2:
            types.extend(range(int(bounds[0]), int(bounds[1]) + 1))
        elif bounds[0].isdigit():
            types.append(int(bounds[0]))
    return types


def _doc_loinc_rows() -> list[tuple[list[int], list[str], str, str]]:
    """§7.3: (types, LOINC codes in order, UCUM cell, confidence) for meastype rows."""
    rows = []
    for line in _section("### 7.3", "General FHIR hints").splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) < 4 or not re.match(r"^\d", cells[0]):
            continue
        codes = re.findall(r"\b\d{4,5}-\d\b", cells[1])
        rows.append((_expand(cells[0]), codes, cells[2], cells[3]))
    return rows


DOC_LOINC_ROWS = _doc_loinc_rows()


def test_loinc_only_where_the_doc_rates_it_high_or_medium() -> None:
    assert len(DOC_LOINC_ROWS) >= 14
    for types, codes, ucum_cell, confidence in DOC_LOINC_ROWS:
        reliable = confidence[0] in "HM" and not confidence.startswith("L")
        for index, type_ in enumerate(types):
            row = MEASTYPE_BY_TYPE.get(type_)
            if row is None:  # 171 etc. in a "167-175" range do not exist
                continue
            if not reliable or not codes:
                assert row.loinc is None, type_
                continue
            expected = codes[index] if len(codes) == len(types) else codes[0]
            assert row.loinc is not None and row.loinc[0] == expected, type_
            assert [code for code, _ in row.also_loinc] == codes[len(types) :]
            doc_ucum = ucum_cell.split()[0]
            if type_ == 4:  # the bodyheight profile wants cm: emitted as m × 10^2
                assert (doc_ucum, row.ucum, row.scale) == ("m", "cm", 2)
            else:
                assert row.ucum == doc_ucum, type_


# §7.2: real wrong mappings in public code; each must stay impossible here.
@pytest.mark.parametrize(
    ("meastype", "wrong_loinc"),
    [(11, "8462-4"), (12, "8867-4"), (9, "85354-9"), (9, "39156-5"), (1, "8302-2"),
     (5, "41982-0"), (6, "73708-0"), (8, "91557-9")],
)  # fmt: skip
def test_peer_mapping_errors_are_not_repeated(meastype: int, wrong_loinc: str) -> None:
    row = MEASTYPE_BY_TYPE[meastype]
    assert row.loinc is None or row.loinc[0] != wrong_loinc


def test_core_vital_signs_mapping_is_exact() -> None:
    expected = {1: "29463-7", 4: "8302-2", 9: "8462-4", 10: "8480-6", 11: "8867-4",
                12: "8310-5", 54: "59408-5", 71: "8310-5"}  # fmt: skip
    vital = {row.type: row.loinc[0] for row in MEASTYPES if row.is_vital_sign and row.loinc}
    assert vital == expected


def test_table_rows_are_consistent() -> None:
    assert len({row.type for row in MEASTYPES}) == len(MEASTYPES)
    for row in MEASTYPES:
        if row.is_vital_sign:
            assert row.loinc is not None and row.profile is not None
            assert row.ucum in VITAL_SIGN_UNITS
            profile_name = row.profile.rsplit("/", 1)[1]
            codes = [row.loinc[0], *(code for code, _ in row.also_loinc)]
            if profile_name == "bp":  # 9 and 10 are the components of one panel
                assert codes[0] in BP_COMPONENTS
            else:
                assert any(VITAL_SIGNS.get(code, ("",))[0] == profile_name for code in codes)
            assert row.profile != VITALSIGNS_PROFILE
        else:
            assert row.profile is None
        assert (row.kind == "afib-code") == (row.ucum is None)
        assert row.category in {"vital-signs", "exam", "activity", "laboratory"}


def test_afib_codes_match_the_doc() -> None:
    sentence = _section("AFib classification for 130", "(Real Body Scan")
    listed = dict(re.findall(r"\b(\d{1,2}) ([A-Z][A-Za-z ]+?)(?=,|\.)", sentence.split(": ", 1)[1]))
    assert {int(code): name for code, name in listed.items()} == AFIB_RESULTS
    assert MEASTYPE_BY_TYPE[130].kind == MEASTYPE_BY_TYPE[139].kind == "afib-code"


def test_positions_match_the_doc() -> None:
    sentence = _section("### 3.5", "**7 is undocumented")
    listed = dict(re.findall(r"\b(\d{1,2}) ([a-z][a-z ]+?)(?=,)", sentence))
    assert len(listed) >= 14
    for code, name in listed.items():
        assert POSITIONS[int(code)] == name
    assert POSITIONS[7] == "whole body"


def test_meastype_code_system_is_a_valid_complete_code_system() -> None:
    code_system = meastype_code_system()
    validate_resource(code_system)
    assert code_system["id"] == "withings-meastype"
    assert code_system["url"] == WITHINGS_MEASTYPE_SYSTEM
    assert (code_system["status"], code_system["content"]) == ("active", "complete")
    concepts = {concept["code"]: concept["display"] for concept in code_system["concept"]}
    assert concepts == {str(row.type): row.name for row in MEASTYPES}
    assert code_system["count"] == len(MEASTYPES)


def test_afib_code_system_lists_every_result() -> None:
    code_system = afib_code_system()
    validate_resource(code_system)
    assert code_system["url"] == WITHINGS_AFIB_SYSTEM
    assert [concept["code"] for concept in code_system["concept"]] == [str(n) for n in range(14)]


def test_all_code_systems_validate_and_have_distinct_urls() -> None:
    systems = code_systems()
    for code_system in systems:
        validate_resource(code_system)
    assert len({code_system["url"] for code_system in systems}) == len(systems)
