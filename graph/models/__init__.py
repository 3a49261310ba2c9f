"""Model references made real: embedded models, loading from hub/path/store, classifiers."""
