"""Pure ML core: DICOM reading, phantoms, sampling, network, training, voting. No database, no HTTP."""
