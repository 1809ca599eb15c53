"""The synthetic CT cohort the toolkit generates itself (for the demo, tests and benchmarks).

* :mod:`.patient`: who the synthetic patient is and where they lie in the scanner;
* :mod:`.phantom`: the chest anatomy in HU (body, fat, muscle, ribs, spine, lungs with vessels
  and airways, heart, patient table);
* :mod:`.procedural`: the procedural textures of that anatomy;
* :mod:`.lesions`: COVID-19 ground glass and consolidation, common-pneumonia lobar consolidation,
  severity as lung involvement;
* :mod:`.scan`: one scan (anatomy + lesions + scanner noise) on a chosen grid;
* :mod:`.cohort`: a whole cohort written in the CC-CCII or CNCB layout (:func:`generate_cohort`).

Real datasets, manifests, splits, caches and samplers live in :mod:`ctcovid.data`; nothing there
imports this package.
"""

from ctcovid.synth.cohort import CohortSummary, SynthCase, SynthConfig, generate_cohort, synth_case

__all__ = ["CohortSummary", "SynthCase", "SynthConfig", "generate_cohort", "synth_case"]
