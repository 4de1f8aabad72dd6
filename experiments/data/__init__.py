"""Generated corpora: synthetic patient records (:mod:`experiments.data.patients`, its word
lists in :mod:`experiments.data.patient_vocabulary`)."""
