"""Where: the biome-stratified global location sampler over RESOLVE Ecoregions 2017.

``load_ecoregions`` -> ``sample`` -> ``write_locations``; ``mmearth-data sample`` runs the three. Label tables
(MMEarth biome/eco_region index <-> RESOLVE BIOME_NUM/ECO_ID) come from :mod:`mmearth_data.catalog`.
"""
from __future__ import annotations

from .ecoregions import Ecoregions, load_ecoregions
from .lookup import lookup_ecoregion
from .output import format_report, write_locations, write_report
from .quotas import MODES, initial_quotas, largest_remainder
from .sampler import SampleResult, SamplerConfig, sample

__all__ = ["Ecoregions", "MODES", "SampleResult", "SamplerConfig", "format_report", "initial_quotas",
           "largest_remainder", "load_ecoregions", "lookup_ecoregion", "sample", "write_locations", "write_report"]
