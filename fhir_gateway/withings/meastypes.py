"""The Withings meastype table and the daily activity / sleep summary field tables. Pure data.

Sources (withings-api.md): §3.6 the meastype list and units, §3.5 positions, §3.6 the AFib
classification, §7.3 LOINC/UCUM suggestions with confidence. LOINC is given only where §7.3 rates
it H or M; everything else is coded with the Withings CodeSystem alone (which every Observation
carries anyway), so a later terminology review can add codes without changing ids.

Decisions worth knowing:
* 226 (basal metabolic rate): §7.3 rates 69429-9 "L-M, VERIFY", below our bar → no LOINC.
* 4 (height): Withings sends metres, the core bodyheight profile only allows cm / [in_i]
  (ValueSet ucum-vitals-common) → `scale=2` turns m into cm exactly (decimal shift).
* 54 (SpO2): §7.3 notes a synthetic 0.95; a saturation of ≤ 1 % is not physiological, so values
  ≤ 1 are read as a fraction and shifted to %.
* 135-138 (ECG intervals): the exponent is unverified (s vs ms, §9); an interval ≤ 2 cannot be in
  ms (a QRS lasts ≥ 40 ms) → read as seconds and shifted to ms.
* 196-198 (EDA / nerve response) are "score" per §3.6 even though the values look like µS.
* 147-251 (U-Scan urine) come from a secondary source only [PT]: `source="verify"`, no LOINC.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

ValueKind = Literal["quantity", "afib-code"]
Source = Literal["spec", "observed", "verify"]
Loinc = tuple[str, str]  # (code, display)

VITALSIGNS_PROFILE = "http://hl7.org/fhir/StructureDefinition/vitalsigns"
BODYWEIGHT_PROFILE = "http://hl7.org/fhir/StructureDefinition/bodyweight"
BODYHEIGHT_PROFILE = "http://hl7.org/fhir/StructureDefinition/bodyheight"
BP_PROFILE = "http://hl7.org/fhir/StructureDefinition/bp"
HEARTRATE_PROFILE = "http://hl7.org/fhir/StructureDefinition/heartrate"
BODYTEMP_PROFILE = "http://hl7.org/fhir/StructureDefinition/bodytemp"
OXYGENSAT_PROFILE = "http://hl7.org/fhir/StructureDefinition/oxygensat"

BLOOD_PRESSURE_PANEL: Loinc = ("85354-9", "Blood pressure panel with all children optional")
SYSTOLIC, DIASTOLIC, HEART_PULSE = 10, 9, 11


@dataclass(frozen=True, slots=True)
class MeasType:
    """One Withings meastype and how it becomes an Observation."""

    type: int
    name: str  # Withings' own name (§3.6)
    withings_unit: str  # the unit after value × 10^unit, as the doc states it
    loinc: Loinc | None
    ucum: str | None  # UCUM code of the emitted quantity (None for coded values)
    unit: str | None  # human-readable unit for Quantity.unit
    category: str  # http://terminology.hl7.org/CodeSystem/observation-category code
    kind: ValueKind = "quantity"
    profile: str | None = None  # the specific core vital-signs profile, if any
    also_loinc: tuple[Loinc, ...] = ()
    scale: int = 0  # extra power of ten from the Withings unit to `ucum`
    small_value_limit: Decimal | None = None  # values ≤ this are in a smaller unit …
    small_value_scale: int = 0  # … and get this extra power of ten
    source: Source = "spec"

    @property
    def is_vital_sign(self) -> bool:
        return self.category == "vital-signs"


def _urine(type_: int, name: str, withings_unit: str, ucum: str) -> MeasType:
    return MeasType(
        type_, name, withings_unit, None, ucum, withings_unit, "laboratory", source="verify"
    )


# fmt: off
MEASTYPES: tuple[MeasType, ...] = (
    MeasType(1, "Weight", "kg", ("29463-7", "Body weight"), "kg", "kg", "vital-signs",
             profile=BODYWEIGHT_PROFILE),
    MeasType(4, "Height", "m", ("8302-2", "Body height"), "cm", "cm", "vital-signs",
             profile=BODYHEIGHT_PROFILE, scale=2),
    MeasType(5, "Fat Free Mass", "kg", ("91557-9", "Lean body weight"), "kg", "kg", "exam"),
    MeasType(6, "Fat Ratio", "%", ("41982-0", "Percentage of body fat Measured"), "%", "%",
             "exam"),
    MeasType(8, "Fat Mass Weight", "kg", ("73708-0", "Body fat [Mass] Calculated"), "kg", "kg",
             "exam"),
    MeasType(9, "Diastolic Blood Pressure", "mmHg", ("8462-4", "Diastolic blood pressure"),
             "mm[Hg]", "mmHg", "vital-signs", profile=BP_PROFILE),
    MeasType(10, "Systolic Blood Pressure", "mmHg", ("8480-6", "Systolic blood pressure"),
             "mm[Hg]", "mmHg", "vital-signs", profile=BP_PROFILE),
    MeasType(11, "Heart Pulse", "bpm", ("8867-4", "Heart rate"), "/min", "beats/minute",
             "vital-signs", profile=HEARTRATE_PROFILE),
    MeasType(12, "Temperature", "°C", ("8310-5", "Body temperature"), "Cel", "°C",
             "vital-signs", profile=BODYTEMP_PROFILE),
    MeasType(54, "SpO2", "%",
             ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"), "%", "%",
             "vital-signs", profile=OXYGENSAT_PROFILE,
             also_loinc=(("2708-6", "Oxygen saturation in Arterial blood"),),
             small_value_limit=Decimal(1), small_value_scale=2),
    MeasType(71, "Body Temperature", "°C", ("8310-5", "Body temperature"), "Cel", "°C",
             "vital-signs", profile=BODYTEMP_PROFILE),
    MeasType(73, "Skin Temperature", "°C", None, "Cel", "°C", "exam"),
    MeasType(76, "Muscle Mass", "kg", ("73964-9", "Body muscle mass"), "kg", "kg", "exam"),
    MeasType(77, "Hydration", "kg", None, "kg", "kg", "exam"),
    MeasType(88, "Bone Mass", "kg", None, "kg", "kg", "exam"),
    MeasType(91, "Pulse Wave Velocity", "m/s", None, "m/s", "m/s", "exam"),
    MeasType(123, "VO2 max", "ml/min/kg", None, "mL/(min.kg)", "mL/min/kg", "activity"),
    MeasType(130, "Atrial fibrillation result", "code", None, None, None, "exam",
             kind="afib-code"),
    MeasType(135, "QRS interval duration", "ms", ("8633-0", "QRS duration"), "ms", "ms", "exam",
             small_value_limit=Decimal(2), small_value_scale=3),
    MeasType(136, "PR interval duration", "ms", ("8625-6", "P-R Interval"), "ms", "ms", "exam",
             small_value_limit=Decimal(2), small_value_scale=3),
    MeasType(137, "QT interval duration", "ms", ("8634-8", "Q-T interval"), "ms", "ms", "exam",
             small_value_limit=Decimal(2), small_value_scale=3),
    MeasType(138, "Corrected QT interval duration", "ms", ("8636-3", "Q-T interval corrected"),
             "ms", "ms", "exam", small_value_limit=Decimal(2), small_value_scale=3),
    MeasType(139, "Atrial fibrillation result from PPG", "code", None, None, None, "exam",
             kind="afib-code"),
    MeasType(155, "Vascular age", "years", None, "a", "years", "exam"),
    MeasType(158, "Nerve Health Score left foot", "score", None, "{score}", "score", "exam",
             source="observed"),
    MeasType(159, "Nerve Health Score right foot", "score", None, "{score}", "score", "exam",
             source="observed"),
    MeasType(167, "Nerve Health Score Conductance 2 electrodes Feet", "score", None, "{score}",
             "score", "exam"),
    MeasType(168, "Extracellular Water", "kg", None, "kg", "kg", "exam"),
    MeasType(169, "Intracellular Water", "kg", None, "kg", "kg", "exam"),
    MeasType(170, "Visceral Fat", "index", None, "{index}", "index", "exam"),
    MeasType(173, "Fat Free Mass for segments", "kg", None, "kg", "kg", "exam"),
    MeasType(174, "Fat Mass for segments", "kg", None, "kg", "kg", "exam"),
    MeasType(175, "Muscle Mass for segments", "kg", None, "kg", "kg", "exam"),
    MeasType(196, "Electrodermal activity feet", "score", None, "{score}", "score", "exam"),
    MeasType(197, "Electrodermal activity left foot", "score", None, "{score}", "score", "exam",
             source="observed"),
    MeasType(198, "Electrodermal activity right foot", "score", None, "{score}", "score", "exam",
             source="observed"),
    MeasType(226, "Basal Metabolic Rate (BMR)", "kcal/day", None, "kcal/d", "kcal/day", "exam"),
    MeasType(227, "Metabolic Age", "years", None, "a", "years", "exam"),
    MeasType(229, "Electrochemical Skin Conductance (ESC)", "µS", None, "uS", "µS", "exam"),
    _urine(147, "Urinary pH", "pH", "[pH]"),
    _urine(148, "Urine specific gravity", "1", "1"),
    _urine(151, "Urinary nitrites", "µmol/L", "umol/L"),
    _urine(204, "Urinary ketones", "mmol/L", "mmol/L"),
    _urine(205, "Urinary vitamin C", "mmol/L", "mmol/L"),
    _urine(248, "Urinary calcium", "mmol/L", "mmol/L"),
    _urine(249, "Urinary creatinine", "mmol/L", "mmol/L"),
    _urine(251, "Urinary calcium/creatinine ratio", "ratio", "{ratio}"),
)
# fmt: on

MEASTYPE_BY_TYPE: dict[int, MeasType] = {row.type: row for row in MEASTYPES}

# AFib classification of 130/139 [SPEC L6938-6962]; the value is a code, not a quantity.
AFIB_RESULTS: dict[int, str] = {
    0: "Negative",
    1: "Positive",
    2: "Inconclusive",
    3: "No signal",
    4: "Other",
    5: "Noise",
    6: "Low HR",
    7: "High HR",
    8: "Inconclusive US",
    9: "Negative normal HR",
    10: "Negative high HR",
    11: "Positive normal HR",
    12: "Positive high HR",
    13: "No diagnosis",
}

# `position` of a measure (§3.5). 7 is undocumented but real (Body Scan whole-body values);
# the name is aiowithings' WHOLE_BODY.
POSITIONS: dict[int, str] = {
    0: "right wrist",
    1: "left wrist",
    2: "right arm",
    3: "left arm",
    4: "right foot",
    5: "left foot",
    6: "between legs",
    7: "whole body",
    8: "left part of body",
    9: "right part of body",
    10: "left leg",
    11: "right leg",
    12: "torso",
    13: "left hand",
    14: "right hand",
    15: "cardiovascular aortic area",
    16: "cardiovascular pulmonic area",
    17: "cardiovascular tricuspid area",
    18: "cardiovascular mitral area",
    19: "cardiovascular apex area",
    20: "pulmonary front right upper area",
    21: "pulmonary front left upper area",
    22: "pulmonary front right lower area",
    23: "pulmonary front left lower area",
    24: "pulmonary back right upper area",
    25: "pulmonary back left upper area",
    26: "pulmonary back right lower area",
    27: "pulmonary back left lower area",
    28: "wide mode",
    29: "between arms",
    30: "hold right",
    31: "hold left",
}


@dataclass(frozen=True, slots=True)
class SummaryField:
    """One numeric field of a getactivity row or a sleep getsummary `data` object."""

    field: str  # Withings' field name, also the local code
    display: str
    loinc: Loinc | None
    ucum: str
    unit: str
    scale: int = 0  # extra power of ten from Withings' unit to `ucum`


# getactivity (§4.1). Distance: 41953-1 is a *walking* pedometer distance in LOINC while Withings
# also counts running and imported sources → local code only. Total calories include the
# passive part, which 41981-2 ("Calories burned") does not say → local code only.
# fmt: off
ACTIVITY_FIELDS: tuple[SummaryField, ...] = (
    SummaryField("steps", "Steps", ("41950-7", "Number of steps in 24 hour Measured"),
                 "{steps}", "steps"),
    SummaryField("distance", "Distance", None, "m", "m"),
    SummaryField("elevation", "Floors climbed", None, "{floors}", "floors"),
    SummaryField("soft", "Light activity duration", None, "s", "s"),
    SummaryField("moderate", "Moderate activity duration", None, "s", "s"),
    SummaryField("intense", "Intense activity duration", None, "s", "s"),
    SummaryField("active", "Active duration (moderate + intense)", None, "s", "s"),
    SummaryField("calories", "Active calories burned", ("41981-2", "Calories burned"),
                 "kcal", "kcal"),
    SummaryField("totalcalories", "Total calories burned (active + passive)", None, "kcal",
                 "kcal"),
    SummaryField("hr_average", "Average heart rate", None, "/min", "beats/minute"),
    SummaryField("hr_min", "Minimum heart rate", None, "/min", "beats/minute"),
    SummaryField("hr_max", "Maximum heart rate", None, "/min", "beats/minute"),
    SummaryField("hr_zone_0", "Duration in heart rate zone 0 (light)", None, "s", "s"),
    SummaryField("hr_zone_1", "Duration in heart rate zone 1 (moderate)", None, "s", "s"),
    SummaryField("hr_zone_2", "Duration in heart rate zone 2 (intense)", None, "s", "s"),
    SummaryField("hr_zone_3", "Duration in heart rate zone 3 (maximal)", None, "s", "s"),
)
# fmt: on

# sleep getsummary `data` (§4.5). Durations stay in seconds, as Withings sends them: exact, and
# `s` is a valid UCUM unit for the sleep LOINC codes. Efficiency is a 0-1 ratio → % (exact ×100).
# durationtosleep / durationtowakeup are deprecated duplicates of sleep_latency / wakeup_latency.
# fmt: off
SLEEP_FIELDS: tuple[SummaryField, ...] = (
    SummaryField("total_sleep_time", "Total sleep time", ("93832-4", "Sleep duration"), "s", "s"),
    SummaryField("deepsleepduration", "Deep sleep duration", ("93831-6", "Deep sleep duration"),
                 "s", "s"),
    SummaryField("lightsleepduration", "Light sleep duration",
                 ("93830-8", "Light sleep duration"), "s", "s"),
    SummaryField("remsleepduration", "REM sleep duration", ("93829-0", "REM sleep duration"),
                 "s", "s"),
    SummaryField("total_timeinbed", "Total time in bed", None, "s", "s"),
    SummaryField("asleepduration", "Asleep duration", None, "s", "s"),
    SummaryField("wakeupduration", "Time awake during the night", None, "s", "s"),
    SummaryField("wakeupcount", "Number of wake-ups", None, "{count}", "count"),
    SummaryField("sleep_latency", "Time to fall asleep", None, "s", "s"),
    SummaryField("wakeup_latency", "Time to get up after waking", None, "s", "s"),
    SummaryField("waso", "Wake after sleep onset", None, "s", "s"),
    SummaryField("sleep_efficiency", "Sleep efficiency", None, "%", "%", scale=2),
    SummaryField("nb_rem_episodes", "Number of REM episodes", None, "{count}", "count"),
    SummaryField("out_of_bed_count", "Number of times out of bed", None, "{count}", "count"),
    SummaryField("hr_average", "Average heart rate during sleep", None, "/min", "beats/minute"),
    SummaryField("hr_min", "Minimum heart rate during sleep", None, "/min", "beats/minute"),
    SummaryField("hr_max", "Maximum heart rate during sleep", None, "/min", "beats/minute"),
    SummaryField("rr_average", "Average respiratory rate during sleep", None, "/min",
                 "breaths/minute"),
    SummaryField("rr_min", "Minimum respiratory rate during sleep", None, "/min",
                 "breaths/minute"),
    SummaryField("rr_max", "Maximum respiratory rate during sleep", None, "/min",
                 "breaths/minute"),
    SummaryField("breathing_disturbances_intensity", "Breathing disturbances intensity", None,
                 "{index}", "index"),
    SummaryField("apnea_hypopnea_index", "Apnea-hypopnea index", None, "{events}/h",
                 "events/hour"),
    SummaryField("snoring", "Snoring duration", None, "s", "s"),
    SummaryField("snoringepisodecount", "Number of snoring episodes", None, "{count}", "count"),
    SummaryField("sleep_score", "Sleep score", None, "{score}", "score"),
)
# fmt: on
