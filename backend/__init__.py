"""ctphase backend: API, domain services and the ML core (``backend.ml``)."""
