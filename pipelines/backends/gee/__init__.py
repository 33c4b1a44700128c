"""Earth Engine: sessions, quota-aware concurrency and the executor that compiles modalities to expressions."""
