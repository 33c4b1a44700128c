"""Defaults of the build-side settings, written once: the configuration dataclasses and the CLI's options (which
show them in ``--help``) both read them here. Plain constants: importing this costs nothing."""

TILE_PX = 128
PARTITION_SIZE = 1000      # tiles per export partition: the unit of tasks, staging files, retry and resume
ATTEMPTS = 5               # tries per read on transient faults
BACKOFF_S = 0.2            # the first retry's wait (doubling, with jitter)
TIMEOUT_S = 20.0           # HTTP timeout of a read
S2_WINDOW_DAYS = 30        # given places with a date: the nearest scene within +- this many days
LABEL_MAX_KM = 10.0        # given places off every ecoregion polygon: the nearest within this distance

GEE_CONCURRENCY = 40       # Earth Engine requests in flight per project (its default quota)
GEE_READ_TIMEOUT_S = 330.0   # Earth Engine ends an interactive computation after 5 minutes: a little more
